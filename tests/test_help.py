"""The command line's help, its generated reference and the documentation agree."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from virnuc_dask.cli.main import build_parser, main
from virnuc_dask.cli.reference import subcommands
from virnuc_dask.config import DEFAULTS_FILE, FILE_KEYS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs" / "reference.md").read_text()
# The README and every page of the documentation site, by their path in the repository.
DOCUMENTS = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}


# Every command that runs something, keyed by its words after ``virnuc-dask``.
LEAVES = dict(subcommands(build_parser()))


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]


def reference_section(words: tuple[str, ...]) -> str:
    """The reference's section of one command, from its heading to the next."""
    heading = f"## virnuc-dask {' '.join(words)}\n"
    assert heading in REFERENCE, f"docs/reference.md: no section {heading.strip()!r}"
    return REFERENCE.split(heading, 1)[1].split("\n## ", 1)[0]


def command_lines(text: str) -> list[list[str]]:
    """``virnuc-dask ...`` command lines in the shell blocks of a Markdown text."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            for part in re.split(r"&&|\|\||;|\|", line):
                words = shlex.split(part)
                if words and words[0] == "virnuc-dask":
                    lines.append(words[1:])
    return lines


@pytest.mark.parametrize("words", sorted(LEAVES), ids=" ".join)
def test_every_option_is_in_the_generated_reference(words):
    section = reference_section(words)
    missing = [
        o
        for o in options(LEAVES[words])
        if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", section)
    ]
    assert not missing, (
        f"virnuc-dask {' '.join(words)}: not in docs/reference.md: {missing}; "
        "run python -m virnuc_dask.cli.reference > docs/reference.md"
    )


@pytest.mark.parametrize("words", sorted(LEAVES), ids=" ".join)
def test_every_command_has_a_reference_section_and_its_help(words, capsys):
    reference_section(words)
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
    for first in {words[0] for words in LEAVES}:
        assert re.search(rf"^\s+{re.escape(first)}\s", text, re.M), first


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_documented_command_lines_parse(name):
    parser = build_parser()
    for words in command_lines(DOCUMENTS[name]):
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{name}: the command does not parse: virnuc-dask {shlex.join(words)}")


def test_the_documentation_shows_the_main_commands_run():
    lines = [w for text in DOCUMENTS.values() for w in command_lines(text)]
    assert len(lines) >= 8
    seen = {build_parser().parse_args(words).command for words in lines}
    assert {"predict", "demo", "validate", "report", "train", "evaluate"} <= seen
    assert {"predict", "demo", "report"} <= {
        build_parser().parse_args(words).command for words in command_lines(README)
    }


def test_command_lines_are_found_in_indented_and_continued_blocks():
    text = "\n".join(
        ["1. Step:", "", "    ```bash", "    virnuc-dask validate a.fa \\", "        --length 300"]
        + ["    ```", ""]
    )
    assert command_lines(text) == [["validate", "a.fa", "--length", "300"]]


def test_quick_start_commands_are_unchanged():
    install = (
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
        'pip install -e ".[test]" && virnuc-dask demo --out virnuc-demo'
    )
    assert install in README
    assert install in DOCUMENTS["docs/guide.md"]
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
    documented = "\n".join(DOCUMENTS.values())
    for key in FILE_KEYS:
        assert f"`{key}`" in documented, f"{key}: not in the documentation"
