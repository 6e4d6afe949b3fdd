"""The notebook walkthrough in examples/ runs, cell by cell, as a kernel would run it."""

from __future__ import annotations

from pathlib import Path

import dask.array as da

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "walkthrough.py"


def code_cells(path: Path) -> list[str]:
    """The code cells of a percent-format notebook (`# %%` starts a cell)."""
    cells: list[list[str]] = []
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            cells.append([] if "[markdown]" not in line else None)
        elif cells and cells[-1] is not None:
            cells[-1].append(line)
    return ["\n".join(cell) for cell in cells if cell is not None]


def test_walkthrough_executes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cells = code_cells(EXAMPLE)
    assert len(cells) >= 6
    namespace: dict = {"__name__": "__main__"}
    try:
        for number, cell in enumerate(cells, 1):
            exec(compile(cell, f"{EXAMPLE.name} cell {number}", "exec"), namespace)
    finally:
        for name in ("client", "cluster"):
            if name in namespace:
                namespace[name].close()
    result = namespace["result"]
    assert result.exit_code == 0
    assert isinstance(result.scores, da.Array)
    assert result.scores.shape == (result.counts.orfs, 2)
    assert all(path.exists() for path in result.paths.values())
    report = tmp_path / "virnuc-walkthrough" / "performance-report.html"
    assert "Dask Performance Report" in report.read_text()
