"""Whole runs of this checkout against another one (an earlier commit), alternating.

    python benchmarks/bench_dataflow.py --base /path/to/other/checkout [--reads 20000]
                                        [--rounds 2] [--work DIR] [--keep]
                                        [--option=--blocksize=1048576 ...]

Each run is ``virnuc-dask predict`` as a user starts it (a subprocess with the
checkout's own ``.venv/bin/python``; a local cluster of one worker with two threads;
the tiny models of ``tests/data/reference/models``, fp32, 500 bp) on the same
generated input (coding-like reads of 400-600 bp, kept in ``--work``). Runs alternate
base, this, base, this ... so that a slower or faster spell of a shared machine
falls on both. Per run:

- wall time of the command;
- time from the start to the first finished partition (its manifest entry appearing
  in ``partitions/``: both layouts write one per embedded partition);
- ``device_busy`` per worker from ``run_summary.json`` (an earlier layout has no such
  figure: it is computed the same way from its summary, model seconds over the time
  from the models being loaded to the end of the run);
- bytes on disk of the output directory without the text result files, per ORF.

``--option`` adds a command-line option to every run (both checkouts). With
``--keep``, a last run of this checkout with ``--keep-embeddings`` gives the bytes per
ORF when embeddings are kept. The script prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_samples import TINY, write_reads  # noqa: E402

TEXT_RESULTS = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "read_predictions.tsv",
    "failed_records.tsv",
    "run_summary.json",
)


def disk_bytes(out: Path) -> int:
    """Bytes of the files under ``out`` but the text results (allocated blocks)."""
    total = 0
    for path in out.rglob("*"):
        if path.is_file() and not (path.parent == out and path.name in TEXT_RESULTS):
            total += path.stat().st_blocks * 512
    return total


def run(checkout: Path, reads: Path, out: Path, *extra: str) -> dict:
    python = checkout / ".venv" / "bin" / "python"
    shutil.rmtree(out, ignore_errors=True)
    command = [str(python), "-m", "virnuc_dask", "predict", str(reads), "--out", str(out)]
    command += ["--length", "500", "--precision", "fp32", "--workers", "1", "--threads", "2"]
    for flag, path in TINY.items():
        command += [flag, str(path)]
    command += [*extra, "--progress-interval", "3600", "-q"]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=checkout, env=env, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and any((out / "partitions").glob("p*.json")):
            first = time.perf_counter() - t0
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: exit {proc.returncode}\n{stderr}")
    summary = json.loads((out / "run_summary.json").read_text())
    orfs = summary["counts"]["orfs"]
    busy = []
    for worker in summary["workers"].values():
        if "device_busy" in worker:
            busy.append(worker["device_busy"])
        elif worker.get("seconds"):
            span = summary["timings_s"]["total"] - summary["timings_s"]["load_models"]
            busy.append(worker["seconds"] / span)
    return {
        "wall_s": wall,
        "first_partition_s": first,
        "device_busy": busy[0] if busy else None,
        "orfs": orfs,
        "bytes_per_orf": disk_bytes(out) / orfs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout")
    parser.add_argument("--reads", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnuc-bench-dataflow"))
    parser.add_argument("--keep", action="store_true", help="a last run keeping embeddings")
    parser.add_argument("--option", action="append", default=[], help="for every run")
    args = parser.parse_args()
    options = [part for option in args.option for part in option.split("=", 1)]
    args.work.mkdir(parents=True, exist_ok=True)
    reads = write_reads(args.work / f"reads_{args.reads}.fa", args.reads)
    results: dict[str, list[dict]] = {"base": [], "this": []}
    for r in range(args.rounds):
        for name, checkout in (("base", args.base), ("this", ROOT)):
            found = run(checkout, reads, args.work / f"out_{name}", *options)
            results[name].append(found)
            print(f"round {r + 1} {name}: {json.dumps(found)}", flush=True)
    if args.keep:
        kept = run(ROOT, reads, args.work / "out_kept", "--keep-embeddings", *options)
        print(f"this --keep-embeddings: {json.dumps(kept)}", flush=True)
    ratios = [
        b["wall_s"] / t["wall_s"] for b, t in zip(results["base"], results["this"], strict=True)
    ]
    print(f"wall time base/this per round: {[round(x, 3) for x in ratios]}")
    print(f"median ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
