"""The command line's help and the README agree, and every setting is documented."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from virnuc_dask.cli.main import build_parser, main
from virnuc_dask.config import DEFAULTS_FILE, FILE_KEYS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command's parser, keyed by its words after ``virnuc-dask``."""
    found = {prefix: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(commands(sub, (*prefix, name)))
    return found


COMMANDS = commands(build_parser())
LEAVES = {
    words: p
    for words, p in COMMANDS.items()
    if words and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
}


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]


def readme_command_lines() -> list[list[str]]:
    """``virnuc-dask ...`` command lines in the README's shell blocks."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            for part in re.split(r"&&|\|\||;|\|", line):
                words = shlex.split(part)
                if words and words[0] == "virnuc-dask":
                    lines.append(words[1:])
    return lines


@pytest.mark.parametrize("words", sorted(LEAVES), ids=" ".join)
def test_every_option_is_in_the_readme(words):
    missing = [
        o
        for o in options(LEAVES[words])
        if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", README)
    ]
    assert not missing, f"virnuc-dask {' '.join(words)}: not in README.md: {missing}"


@pytest.mark.parametrize("words", sorted(LEAVES), ids=" ".join)
def test_every_command_is_in_the_readme_and_its_help(words, capsys):
    assert f"virnuc-dask {' '.join(words)}" in README
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert LEAVES[words].description, f"{words}: no description"
    for option in options(LEAVES[words]):
        assert option in text
    # every option explains itself
    for action in LEAVES[words]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{words} {action.option_strings}: no help text"


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for words in COMMANDS:
        if len(words) == 1:
            assert re.search(rf"^\s+{re.escape(words[0])}\s", text, re.M), words


def test_readme_command_lines_parse():
    lines = readme_command_lines()
    assert len(lines) >= 8
    parser = build_parser()
    seen = set()
    for words in lines:
        try:
            args = parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"README command does not parse: virnuc-dask {shlex.join(words)}")
        seen.add(args.command)
    assert {"predict", "demo", "validate", "report"} <= seen


def test_quick_start_commands_are_unchanged():
    assert (
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
        'pip install -e ".[test]" && virnuc-dask demo --out virnuc-demo'
    ) in README
    assert ". .venv/bin/activate && python -m pytest" in README
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_every_setting_has_a_comment_in_default_yaml():
    assert (ROOT / "configs" / "default.yaml").resolve() == DEFAULTS_FILE.resolve()
    lines = DEFAULTS_FILE.read_text().splitlines()
    keys = {}
    for i, line in enumerate(lines):
        match = re.match(r"^([a-z_]+):", line)
        if match:
            keys[match.group(1)] = i
    assert set(keys) == set(FILE_KEYS)
    assert set(yaml.safe_load(DEFAULTS_FILE.read_text())) == set(FILE_KEYS)
    for key, i in keys.items():
        # the comment block above the key (a key may share the block of the one above it)
        j = i - 1
        while j >= 0 and re.match(r"^[a-z_]+:", lines[j]):
            j -= 1
        assert j >= 0 and lines[j].startswith("#"), f"{key}: no comment above it"
    for key in FILE_KEYS:
        assert f"`{key}`" in README or f"--{key.replace('_', '-')}" in README, key
