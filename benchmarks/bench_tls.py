"""What TLS costs a run: the same prediction on a local cluster with and without it.

    python benchmarks/bench_tls.py [--reads 20000] [--rounds 3] [--work DIR]

Each round starts the local cluster ``predict`` starts (one CPU worker, two threads,
its nanny; :func:`virnuc_dask.cluster.start.local_cluster`) once with the run's TLS
credentials and once without (plain TCP), alternating which goes first, and runs the
same prediction on it (the tiny models of ``tests/data/reference/models``, fp32,
500 bp) into a fresh directory. A warm-up run on 500 reads comes first and is not
counted. Printed: the start time of each cluster, the wall time of each run on it
and the CPU time (user + system) that this process and the cluster's processes
spent on it, each round's TLS/TCP ratios and the ratios of the medians. On a shared
machine the CPU time is the steadier figure: other users' work stretches the wall
time, not the CPU time a run needs.

The script prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import dask
import psutil
from distributed import Client

from virnuc_dask.cluster import credentials
from virnuc_dask.cluster.start import local_cluster
from virnuc_dask.cluster.workers import WORKER_ENV
from virnuc_dask.config import load_settings
from virnuc_dask.dataflow.run import run_prediction

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_samples import write_reads  # noqa: E402

MODELS = ROOT / "tests" / "data" / "reference" / "models"
TINY = {
    "esm_model": str(MODELS / "esm2_t2_64_tiny.pt"),
    "dnabert_model": str(MODELS / "dnabert_s_tiny"),
    "classifier": str(MODELS / "mlp_tiny.pth"),
}


def cpu_seconds() -> float:
    """User + system CPU time of this process and every process it started."""
    me = psutil.Process()
    total = 0.0
    for proc in (me, *me.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def one_run(reads: Path, out: Path, *, tls: bool) -> tuple[float, float, float]:
    """Seconds to start the cluster, seconds of the prediction on it, its CPU seconds."""
    shutil.rmtree(out, ignore_errors=True)
    settings = load_settings(
        inputs=[str(reads)],
        overrides={
            "out": str(out),
            "length": 500,
            "precision": "fp32",
            "workers": 1,
            "dashboard_address": "localhost:0",
            **TINY,
        },
    ).with_absolute_paths()
    started = time.perf_counter()
    security = credentials.in_memory() if tls else None
    with (
        dask.config.set(WORKER_ENV),
        local_cluster(settings, security=security) as cluster,
        Client(cluster, security=security) as client,
    ):
        client.wait_for_workers(1)
        up, cpu = time.perf_counter(), cpu_seconds()
        result, _ = run_prediction(settings, client=client)
        done, cpu = time.perf_counter(), cpu_seconds() - cpu
    assert result.exit_code == 0, result.exit_code
    return up - started, done - up, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("bench-tls"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    reads = write_reads(args.work / f"reads_{args.reads}.fa", args.reads)
    warmup = write_reads(args.work / "reads_500.fa", 500)
    one_run(warmup, args.work / "warmup", tls=True)

    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    print(f"{args.reads} reads, {args.rounds} rounds (alternating order)")
    print("round  mode  cluster start s  run s  CPU s")
    for k in range(args.rounds):
        order = (True, False) if k % 2 == 0 else (False, True)
        for tls in order:
            start, run, used = one_run(reads, args.work / "out", tls=tls)
            wall[tls].append(run)
            cpu[tls].append(used)
            print(
                f"{k + 1:5d}  {'TLS ' if tls else 'TCP '}  {start:15.2f}  {run:5.1f}  {used:5.1f}",
                flush=True,
            )
        print(
            f"       round ratios TLS/TCP: run {wall[True][-1] / wall[False][-1]:.3f}, "
            f"CPU {cpu[True][-1] / cpu[False][-1]:.3f}",
            flush=True,
        )
    for what, values in (("run", wall), ("CPU", cpu)):
        tls_median, tcp_median = statistics.median(values[True]), statistics.median(values[False])
        print(
            f"median {what}: TLS {tls_median:.1f} s, TCP {tcp_median:.1f} s, "
            f"ratio {tls_median / tcp_median:.3f}"
        )


if __name__ == "__main__":
    main()
