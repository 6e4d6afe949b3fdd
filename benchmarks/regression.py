"""Is a version of virnuc-dask slower than another? Both run one fixed workload, alternating.

    python benchmarks/regression.py BASE CANDIDATE [--pairs 12] [--min-pairs 6]
                                    [--reads 24] [--threshold 0.10] [--json FILE]

``BASE`` and ``CANDIDATE`` are each a git ref of this repository (extracted with
``git archive`` into a scratch directory) or a directory holding the project. Each
version gets a long-lived process of its own (``regression_workload.py``) that
imports ``virnuc_dask`` from that version's directory (this virtualenv's packages
otherwise) and starts a one-worker in-process Dask cluster once. After a warm-up run
each (model loading, compilation), the driver asks them in turn to run the same
``predict`` — the same generated reads, the ``bench --size small`` models (ESM-2
6 x 320, DNABERT-S 2 x 256, random weights in the real formats), fp32 — in pairs
ordered A B, B A, A B, ... so that a drift of the machine's load falls on both
equally. Only one of the two computes at any time.

Per stage — ESM-2, DNABERT-S (each embedding stage's seconds from the run summary),
end to end (wall time of the call) and end to end in CPU seconds of the version's
process (which other processes' load inflates far less than wall time: it counts
the time the process computed, not the time it waited for a core) — each pair gives
a ratio candidate / base;
the estimate is their median and the interval the sign test's: order statistics of
the ratios that hold the median with at most 5 % on each side, whatever the shape of
the noise. A stage is **slower** when the interval's lower bound is above
``1 + threshold``: with 95 % confidence the candidate is more than 10 % slower. A
pair disturbed by other load on a shared machine moves a median and its order
statistics by one rank at most. After ``--min-pairs`` pairs (at least 5: fewer
cannot bound a median at 95 %) the run stops early when every stage's upper bound is
below ``1 + threshold`` (clearly not slower); otherwise it runs ``--pairs`` pairs.

Exit status: 0 no stage confidently slower; 1 some stage more than ``threshold``
slower with confidence; 3 the comparison could not be made (a version failed to
run the workload) — distinct from 1 so that CI can tell them apart. ``--max-seconds``
bounds the time spent on pairs (a busy machine makes each run slower): the check stops
adding pairs there, whatever the ratios, and concludes from those it has.

This is a measurement, not a unit test; ``.ci/run`` runs it against ``HEAD~1``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = Path(__file__).resolve().parent / "regression_workload.py"
STAGES = ("esm", "dnabert", "end_to_end", "end_to_end_cpu")
LABELS = {
    "esm": "ESM-2",
    "dnabert": "DNABERT-S",
    "end_to_end": "end to end",
    "end_to_end_cpu": "end to end, CPU s",
}
RUN_TIMEOUT = 600.0  # seconds one workload run (the warm-up included) may take
EXIT_SLOWER, EXIT_UNMEASURED = 1, 3
ALPHA = 0.05  # each side of the interval: 90 % two-sided, 95 % that it is > low

logger = logging.getLogger("regression")


class Unmeasured(RuntimeError):
    """A version could not run the workload."""


def order_rank(n: int, alpha: float = ALPHA) -> int:
    """The rank ``k`` (1-based) whose order statistics ``x(k)``, ``x(n + 1 - k)`` bound
    the median of ``n`` paired ratios with at most ``alpha`` on each side (the sign
    test's interval: no assumption on the noise but independence of the pairs); 0 when
    ``n`` is too small for any bound at that level."""
    k, tail = 0, 0.0
    while k < n:
        tail += math.comb(n, k) / 2**n  # P(Binomial(n, 1/2) <= k)
        if tail > alpha:
            break
        k += 1
    return k


def ratio_interval(base: list[float], candidate: list[float]) -> dict[str, float]:
    """The median of the pairwise ratios ``candidate / base`` and its distribution-free
    interval (:func:`order_rank`); a pair disturbed by other load moves neither far."""
    if len(base) != len(candidate) or not base:
        raise ValueError("need the same positive number of base and candidate times")
    ratios = sorted(c / b for b, c in zip(base, candidate, strict=True))
    n = len(ratios)
    k = order_rank(n)
    return {
        "ratio": statistics.median(ratios),
        "low": ratios[k - 1] if k else 0.0,
        "high": ratios[n - k] if k else math.inf,
        "best_ratio": min(candidate) / min(base),
        "pairs": n,
    }


def verdict(interval: dict[str, float], threshold: float) -> str:
    """``slower`` when the whole interval is above ``1 + threshold``, ``not slower`` when
    the whole interval is below it, else ``undecided`` (which does not fail)."""
    if interval["low"] > 1 + threshold:
        return "slower"
    if interval["high"] < 1 + threshold:
        return "not slower"
    return "undecided"


@contextlib.contextmanager
def version_dir(spec: str, scratch: Path, name: str) -> Iterator[Path]:
    """The project directory of ``spec``: itself if a directory, else the git ref extracted."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "virnuc_dask" / "__init__.py").is_file():
            raise Unmeasured(f"{spec}: no virnuc_dask package in this directory")
        yield path.resolve()
        return
    dest = scratch / name
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", spec],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise Unmeasured(
            f"{spec!r} is neither a directory nor a git ref of {ROOT}: "
            f"{archive.stderr.decode(errors='replace').strip()}"
        )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    yield dest


class Version:
    """A running ``regression_workload.py`` for one project directory."""

    def __init__(self, label: str, root: Path, fasta: Path, models: Path, work: Path) -> None:
        self.label = label
        work.mkdir(parents=True, exist_ok=True)
        self.log = open(work / "stderr.log", "w")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKLOAD), str(root), str(fasta), str(models), str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        self._read_line("@@ready")

    def _read_line(self, prefix: str) -> str:
        """The next stdout line starting with ``prefix`` (bounded by :data:`RUN_TIMEOUT`)."""
        import selectors

        deadline = time.monotonic() + RUN_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(timeout=left):
                    raise Unmeasured(
                        f"{self.label}: no answer within {RUN_TIMEOUT:.0f} s{self._log_tail()}"
                    )
                line = self.proc.stdout.readline()
                if not line:
                    raise Unmeasured(
                        f"{self.label}: the workload process ended "
                        f"(exit {self.proc.wait()}){self._log_tail()}"
                    )
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()

    def _log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        tail = Path(self.log.name).read_text(errors="replace").splitlines()[-lines:]
        return "; its last output:\n" + "\n".join(tail) if tail else ""

    def run(self) -> dict[str, float]:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return json.loads(self._read_line("@@result "))

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def prepare_workload(work: Path, reads: int) -> tuple[Path, Path]:
    """The generated reads and the ``small`` models, built by this checkout's code."""
    sys.path.insert(0, str(ROOT))
    from virnuc_dask.bench.kit import build_models, write_bench_input

    fasta = write_bench_input(work / "reads.fa", reads)
    models = build_models(work / "models", "small")
    path = work / "models.json"
    path.write_text(json.dumps(models))
    return fasta, path


def compare(args: argparse.Namespace, scratch: Path) -> dict:
    fasta, models = prepare_workload(scratch, args.reads)
    times: dict[str, dict[str, list[float]]] = {"base": {}, "candidate": {}}
    with (
        version_dir(args.base, scratch, "base") as base_root,
        version_dir(args.candidate, scratch, "candidate") as cand_root,
    ):
        versions = {}
        try:
            for label, root in (("base", base_root), ("candidate", cand_root)):
                logger.info("%s: %s", label, root)
                versions[label] = Version(label, root, fasta, models, scratch / f"work-{label}")
                versions[label].run()  # warm-up: model loading, compilation, caches
            intervals: dict[str, dict] = {}
            started = time.monotonic()
            for i in range(args.pairs):
                order = ("base", "candidate") if i % 2 == 0 else ("candidate", "base")
                for label in order:
                    for stage, seconds in versions[label].run().items():
                        times[label].setdefault(stage, []).append(seconds)
                intervals = {
                    s: ratio_interval(times["base"][s], times["candidate"][s])
                    for s in STAGES
                    if s in times["base"] and s in times["candidate"]
                }
                logger.info(
                    "pair %d: %s",
                    i + 1,
                    ", ".join(f"{LABELS[s]} x{v['ratio']:.3f}" for s, v in intervals.items()),
                )
                if i + 1 >= args.min_pairs and all(
                    verdict(v, args.threshold) == "not slower" for v in intervals.values()
                ):
                    break
                if args.max_seconds and time.monotonic() - started > args.max_seconds:
                    # Stopping on time does not depend on the ratios: no bias either way.
                    logger.warning(
                        "stopping after %d pairs: --max-seconds %.0f reached%s",
                        i + 1,
                        args.max_seconds,
                        "" if i + 1 >= args.min_pairs else " (too few pairs to conclude)",
                    )
                    break
        finally:
            for v in versions.values():
                v.close()
    return {
        "base": args.base,
        "candidate": args.candidate,
        "threshold": args.threshold,
        "stages": {s: {**v, "verdict": verdict(v, args.threshold)} for s, v in intervals.items()},
        "times": times,
    }


def report(result: dict) -> str:
    lines = [
        f"candidate {result['candidate']} / base {result['base']}: time ratio "
        f"(median of pairs, 90 % interval; > {1 + result['threshold']:.2f} "
        "with confidence = slower)",
        f"{'stage':<18} {'ratio':>7} {'interval':>17} {'best/best':>9} {'pairs':>5}  verdict",
    ]
    for stage, v in result["stages"].items():
        lines.append(
            f"{LABELS[stage]:<18} {v['ratio']:>7.3f} [{v['low']:>6.3f}, {v['high']:>6.3f}] "
            f"{v['best_ratio']:>9.3f} {v['pairs']:>5}  {v['verdict']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="git ref or project directory of the reference version")
    parser.add_argument("candidate", help="git ref or project directory of the version tested")
    parser.add_argument("--pairs", type=int, default=12, help="most A/B pairs (default 12)")
    parser.add_argument(
        "--min-pairs", type=int, default=6, help="pairs before stopping early (default 6)"
    )
    parser.add_argument("--reads", type=int, default=24, help="reads of the workload (24)")
    parser.add_argument(
        "--threshold", type=float, default=0.10, help="slowdown that counts (0.10 = 10 %%)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="stop adding pairs after this many seconds of them (a bound for CI on a busy "
        "machine; with fewer than 5 pairs nothing is concluded)",
    )
    parser.add_argument("--json", help="write the ratios and every time to this file")
    parser.add_argument("--keep", help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if order_rank(args.min_pairs) < 1 or args.pairs < args.min_pairs:
        parser.error("need 5 <= --min-pairs <= --pairs (fewer pairs cannot bound a median)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    t = time.perf_counter()
    try:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            result = compare(args, Path(args.keep))
        else:
            with tempfile.TemporaryDirectory(prefix="vd-regression-") as scratch:
                result = compare(args, Path(scratch))
    except Unmeasured as e:
        logger.error("regression check not made: %s", e)
        return EXIT_UNMEASURED
    result["seconds"] = time.perf_counter() - t
    sys.stdout.write(report(result) + f"\n({result['seconds']:.0f} s)\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    slower = [s for s, v in result["stages"].items() if v["verdict"] == "slower"]
    return EXIT_SLOWER if slower else 0


if __name__ == "__main__":
    sys.exit(main())
