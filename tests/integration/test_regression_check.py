"""``benchmarks/regression.py``: its statistics, and a real comparison that must catch a
candidate whose ESM-2 stage was made slower on purpose.

The slowed candidate is a copy of this checkout whose ESM-2 forward, after computing,
keeps its thread busy for a fixed share of the time the forward took (CPU work, so
both the wall and the CPU-seconds figures see it) — a stand-in for a change that made
the stage slower, while the workload and everything else are this checkout's own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "regression.py"

#: Appended to the candidate's ESM-2 module: every forward costs ``1 + extra`` times
#: its time.
SLOWDOWN = """

def _slowed_forward(forward, extra):
    import time as _time

    def slowed(self, batch):
        t = _time.perf_counter()
        out = forward(self, batch)
        end = _time.perf_counter() + extra * (_time.perf_counter() - t)
        while _time.perf_counter() < end:  # busy: CPU seconds as well as wall time
            pass
        return out

    return slowed


EsmAdapter.forward = _slowed_forward(EsmAdapter.forward, {extra})
"""


def load_script():
    spec = importlib.util.spec_from_file_location("regression_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regression = load_script()


@pytest.mark.parametrize(("n", "k"), [(4, 0), (5, 1), (8, 2), (12, 3), (20, 6)])
def test_order_rank_bounds_the_median_at_five_percent_a_side(n: int, k: int) -> None:
    assert regression.order_rank(n) == k
    if k:  # the tail below rank k is at most 5 %, one more rank would exceed it
        tail = sum(math.comb(n, i) for i in range(k)) / 2**n
        assert tail <= regression.ALPHA < tail + math.comb(n, k) / 2**n


def test_interval_and_verdicts() -> None:
    base = [1.0] * 8
    slower = regression.ratio_interval(base, [1.3, 1.25, 1.2, 1.22, 1.28, 1.24, 1.21, 1.9])
    assert slower["low"] == pytest.approx(1.21) and slower["high"] == pytest.approx(1.3)
    assert regression.verdict(slower, 0.10) == "slower"
    same = regression.ratio_interval(base, [1.02, 0.97, 1.01, 0.99, 1.03, 0.98, 1.0, 1.6])
    assert regression.verdict(same, 0.10) == "not slower"  # one disturbed pair moves little
    wide = regression.ratio_interval(base, [0.9, 1.3, 1.0, 1.2, 1.1, 0.95, 1.25, 1.05])
    assert regression.verdict(wide, 0.10) == "undecided"
    with pytest.raises(ValueError):
        regression.ratio_interval([1.0], [])


def slowed_copy(dest: Path, extra: float) -> Path:
    """A copy of this checkout's package whose ESM-2 forward is ``1 + extra`` times slower."""
    shutil.copytree(
        ROOT / "virnuc_dask", dest / "virnuc_dask", ignore=shutil.ignore_patterns("__pycache__")
    )
    module = dest / "virnuc_dask" / "models" / "esm2.py"
    source = module.read_text()
    assert "class EsmAdapter" in source and "def forward(self, batch" in source
    module.write_text(source + SLOWDOWN.format(extra=extra))
    return dest


@pytest.mark.slow
def test_a_candidate_made_slower_is_caught(tmp_path: Path) -> None:
    # Half again: the stage ~1.4x. The suite runs this beside other tests on as few as
    # two cores, where a ~1.2x stage (extra=0.25) read x1.19 over 20 pairs with an
    # interval reaching below 1.10 (not proven); measured alone, 12 pairs prove that
    # one (docs/performance.md).
    candidate = slowed_copy(tmp_path / "candidate", extra=0.5)
    report = tmp_path / "regression.json"
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(ROOT),
            str(candidate),
            "--pairs",
            "20",  # a slowed candidate runs all 20: more pairs, a narrower interval
            "--min-pairs",
            "5",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == regression.EXIT_SLOWER, run.stdout + run.stderr[-3000:]
    stages = json.loads(report.read_text())["stages"]
    assert stages["esm"]["verdict"] == "slower", stages
    assert stages["dnabert"]["verdict"] != "slower", stages  # only what was slowed
    assert "ESM-2" in run.stdout and "slower" in run.stdout
