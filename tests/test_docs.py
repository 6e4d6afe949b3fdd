"""The documentation: a short README, a site that builds strictly, a generated reference."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from virnuc_dask import rundir
from virnuc_dask.cli.reference import command_section, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def test_the_committed_reference_is_what_the_parsers_give():
    assert (DOCS / "reference.md").read_text() == reference_markdown(), (
        "docs/reference.md is out of date: run "
        "python -m virnuc_dask.cli.reference > docs/reference.md"
    )


def test_a_new_option_changes_the_reference():
    parser = argparse.ArgumentParser(prog="virnuc-dask example", description="An example.")
    parser.add_argument("inputs", metavar="INPUT", nargs="+", help="files to read")
    group = parser.add_argument_group("tuning")
    group.add_argument("--rows", type=int, metavar="N", help="rows per part (default %(default)s)")
    before = command_section(("example",), parser)
    group.add_argument("--mode", choices=["fast", "exact"], help="how to run: fast|exact")
    after = command_section(("example",), parser)
    assert "| `--rows N` | rows per part (default None) |" in before
    assert "| `INPUT...` | files to read |" in before
    assert "--mode" not in before
    assert "| `--mode fast|exact` | how to run: fast\\|exact |" in after
    assert "**tuning**" in after


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert any(t.startswith("docs/") for t in local)
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: list) -> list[str]:
        found = []
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found += pages(value) if isinstance(value, list) else [value]
        return found

    assert sorted(pages(config["nav"])) == sorted(p.name for p in DOCS.glob("*.md"))


def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    # Material prints a banner about MkDocs 2 unless told not to; it is not a warning.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in DOCS.glob("*.md"):
        built = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert built.is_file(), f"{page.name} was not built"
    assert "--partition-rows" in (site / "reference" / "index.html").read_text()


def test_the_architecture_page_names_every_package():
    """The package tree on docs/architecture.md is the package's: a new or renamed
    package (or top-level module) shows up here until the page says what it holds."""
    text = (DOCS / "architecture.md").read_text()
    tree = text.split("## The package", 1)[1].split("```", 2)[1]
    # "core/" or "doctor/ bench/" (a folder name followed by a space), "api.py"
    named = set(re.findall(r"(?<![\w/.])(\w+)/(?=\s)", tree))
    named |= set(re.findall(r"(\w+)\.py\b", tree))
    named.discard("virnuc_dask")
    package = ROOT / "virnuc_dask"
    actual = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    actual |= {p.stem for p in package.glob("*.py")} - {"__init__", "__main__"}
    assert named == actual, (
        f"docs/architecture.md names {sorted(named - actual)} that the package lacks and "
        f"lacks {sorted(actual - named)}"
    )


def test_every_file_a_run_writes_is_documented():
    """Each name in ``rundir`` (the one list of what a run writes) is on a page."""
    documented = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    names = [v for k, v in vars(rundir).items() if k.isupper() and isinstance(v, str)]
    assert len(names) >= 10
    missing = [n for n in names if not re.search(rf"(?<![\w.-]){re.escape(n)}", documented)]
    assert not missing, f"written by a run but on no page of docs/: {missing}"
