"""Every benchmark script still runs against this checkout: its imports resolve and its
arguments parse (``--help``), so a module moved or renamed in the package cannot leave a
benchmark broken until someone next measures with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# regression_workload.py is a child of regression.py (no options; its run is tested there).
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "regression_workload.py")


def test_every_script_is_listed():
    assert {"regression.py", "layer_speed.py", "bench_dataflow.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_imports_and_parses(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{script} --help: {done.stderr[-2000:]}"
    assert "usage:" in done.stdout
