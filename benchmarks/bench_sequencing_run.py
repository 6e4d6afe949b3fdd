"""A sequencing run in one command against one command per sample, and the memory of a
run as its samples grow.

    python benchmarks/bench_sequencing_run.py [--samples 4] [--reads 300] [--rounds 2]
                                              [--memory 1 20] [--work DIR]

Every run is ``virnuc-dask predict`` as a user starts it (a subprocess, one local
worker, the tiny models of ``tests/data/reference/models``, fp32, 500 bp, ``--overwrite``
so nothing is reused).  Samples are generated FASTA files of ``--reads`` coding-like
reads each (different seeds: no read is shared between samples).

Timing: ``--samples`` samples as one ``predict --samplesheet`` run (A) and as one
``predict`` per sample, one after the other (B), alternated A B A B for ``--rounds``
rounds; the ratio is taken within each round.  Memory: a ``--samplesheet`` run of each
sample count in ``--memory``, the peak RSS of the client process and of the largest
other process it started (the worker), sampled as ``bench_samples.py`` does.

The script prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psutil
from bench_samples import MIB, sampled, write_reads
from bench_samples import predict_command as command


def timed(cmd: list[str], interval: float = 0.2) -> tuple[float, int, int]:
    """Wall seconds, peak client RSS and peak RSS of the largest other process."""
    wall, client, others = sampled(cmd, interval)
    return wall, client, others[0] if others else 0


def samples(work: Path, n: int, reads: int) -> Path:
    """A sheet of ``n`` FASTA samples of ``reads`` reads each, in ``work``."""
    rows = ["sample,fastq_1,fastq_2,fasta"]
    for k in range(n):
        write_reads(work / f"sample_{k:03d}.fa", reads, seed=100 + k)
        rows.append(f"S{k:03d},,,sample_{k:03d}.fa")
    sheet = work / f"samples_{n}.csv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--reads", type=int, default=300, help="reads per sample")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", type=int, nargs="*", default=[1, 20])
    parser.add_argument("--work", type=Path, default=Path("bench-sequencing-run"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {psutil.cpu_count()} CPUs, load average {psutil.getloadavg()[0]:.1f}")

    sheet = samples(args.work, args.samples, args.reads)
    files = [args.work / f"sample_{k:03d}.fa" for k in range(args.samples)]
    print(
        f"\n{args.samples} samples of {args.reads} reads: one --samplesheet run (A) "
        "against one run per sample (B)"
    )
    print("| round | A: one run | B: one run per sample | A / B |")
    print("|---|---|---|---|")
    for r in range(1, args.rounds + 1):
        a, _, _ = timed(command("--samplesheet", str(sheet), "--out", str(args.work / "run")))
        b = 0.0
        for k, path in enumerate(files):
            b += timed(command(str(path), "--out", str(args.work / f"alone_{k:03d}")))[0]
        print(f"| {r} | {a:.1f} s | {b:.1f} s | {a / b:.2f} |", flush=True)

    if args.memory:
        print("\npeak memory of --samplesheet runs")
        print("| samples | reads | wall | peak client RSS | peak worker RSS |")
        print("|---|---|---|---|---|")
        for n in args.memory:
            sheet = samples(args.work, n, args.reads)
            wall, client, worker = timed(
                command("--samplesheet", str(sheet), "--out", str(args.work / f"mem_{n}"))
            )
            print(
                f"| {n} | {n * args.reads:,} | {wall:.1f} s | {client / MIB:.0f} MiB | "
                f"{worker / MIB:.0f} MiB |",
                flush=True,
            )
    print(f"load average {psutil.getloadavg()[0]:.1f} at the end (the machine may be shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
