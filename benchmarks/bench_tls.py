"""What TLS costs a run: the same prediction on a local cluster with and without it.

    python benchmarks/bench_tls.py [--reads 20000] [--rounds 3] [--work DIR]

Each round starts the local cluster ``predict`` starts (one CPU worker, two threads,
its nanny; :func:`virnuc_dask.cluster.start.local_cluster`) once with the run's TLS
credentials and once without (plain TCP), alternating which goes first, and runs the
same prediction on it (the tiny models of ``tests/data/reference/models``, fp32,
500 bp) into a fresh directory. A warm-up run on 500 reads comes first and is not
counted. Printed: the start time of each cluster, the wall time of each run on it,
each round's TLS/TCP ratio and the ratio of the medians.

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


def one_run(reads: Path, out: Path, *, tls: bool) -> tuple[float, float]:
    """Seconds to start the cluster and seconds of the prediction on it."""
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
        up = time.perf_counter()
        result, _ = run_prediction(settings, client=client)
        done = time.perf_counter()
    assert result.exit_code == 0, result.exit_code
    return up - started, done - up


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

    times: dict[bool, list[float]] = {True: [], False: []}
    print(f"{args.reads} reads, {args.rounds} rounds (alternating order)")
    print("round  mode  cluster start s  run s")
    for k in range(args.rounds):
        order = (True, False) if k % 2 == 0 else (False, True)
        for tls in order:
            start, run = one_run(reads, args.work / "out", tls=tls)
            times[tls].append(run)
            print(f"{k + 1:5d}  {'TLS ' if tls else 'TCP '}  {start:15.2f}  {run:6.1f}", flush=True)
        print(f"       round ratio TLS/TCP: {times[True][-1] / times[False][-1]:.3f}", flush=True)
    tls_median, tcp_median = statistics.median(times[True]), statistics.median(times[False])
    print(
        f"median run: TLS {tls_median:.1f} s, TCP {tcp_median:.1f} s, "
        f"ratio {tls_median / tcp_median:.3f}"
    )


if __name__ == "__main__":
    main()
