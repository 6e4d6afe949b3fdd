"""A sequencing run in one command against one command per sample, and the memory of a
run as its samples grow.

    python benchmarks/bench_sequencing_run.py [--samples 4] [--reads 300] [--rounds 2]
                                              [--sizes N ...] [--shared N] [--other DIR]
                                              [--memory 1 20] [--work DIR]

Every run is ``virnuc-dask predict`` as a user starts it (a subprocess, one local
worker, the tiny models of ``tests/data/reference/models``, fp32, 500 bp, ``--overwrite``
so nothing is reused).  Samples are generated FASTA files of ``--reads`` coding-like
reads each (different seeds: no read is shared between samples), or of ``--sizes`` reads
(one size per sample: a large sample beside small ones); ``--shared N`` adds the same N
reads (a spike-in, a phage present in every sample) to every sample.

Timing: ``--samples`` samples as one ``predict --samplesheet`` run (A) and as one
``predict`` per sample, one after the other (B), alternated A B A B for ``--rounds``
rounds; the ratio is taken within each round.  ``--other DIR``: also a
``--samplesheet`` run of the checkout in DIR (C, through PYTHONPATH), alternated with
the others, to compare two versions of the sequencing run.  For A (and C) the ORFs taken
from other samples and the worker's ``device_busy`` over the whole run (from
``RUN/run_summary.json``).  Memory: a ``--samplesheet`` run of each sample count in
``--memory``, the peak RSS of the client process and of the largest other process it
started (the worker), sampled as ``bench_samples.py`` does.

The script prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import psutil
from bench_samples import MIB, sampled, write_reads
from bench_samples import predict_command as command


def timed(
    cmd: list[str], interval: float = 0.2, env: dict[str, str] | None = None
) -> tuple[float, int, int]:
    """Wall seconds, peak client RSS and peak RSS of the largest other process."""
    wall, client, others = sampled(cmd, interval, env=env)
    return wall, client, others[0] if others else 0


def samples(work: Path, sizes: list[int], shared: int = 0) -> Path:
    """A sheet of FASTA samples of ``sizes`` reads each (plus ``shared`` reads common to
    all), in ``work``."""
    rows = ["sample,fastq_1,fastq_2,fasta"]
    common = ""
    if shared:
        common = write_reads(work / f"shared_{shared}.fa", shared, seed=99).read_text()
        common = common.replace(">read_", ">shared_")
    for k, n in enumerate(sizes):
        name = f"sample_{k:03d}_{n}_{shared}.fa"
        own = write_reads(work / f"own_{k:03d}_{n}.fa", n, seed=100 + k).read_text()
        if not (work / name).exists():
            (work / name).write_text(own + common)
        rows.append(f"S{k:03d},,,{name}")
    sheet = work / f"samples_{'_'.join(map(str, sizes))}_{shared}.csv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def run_figures(run: Path) -> tuple[str, float]:
    """ORFs taken from other samples, each worker's device_busy and the time inside the
    models' forwards summed over the samples (from the summaries); and that time."""
    summary = json.loads((run / "run_summary.json").read_text())
    taken = sum(s.get("orfs_from_run") or 0 for s in summary["samples"])
    busy = [w.get("device_busy") for w in summary.get("workers", {}).values()]
    shown = ", ".join(f"{b:.2f}" for b in busy if b is not None) or "n/a"
    model_s = 0.0
    for sample in summary["samples"]:
        own = json.loads((run / sample["sample"] / "run_summary.json").read_text())
        model_s += sum(stage["seconds"] for stage in own["embedding"].values())
    return f"{taken:,} ORFs taken, device_busy {shown}, model {model_s:.1f} s", model_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--reads", type=int, default=300, help="reads per sample")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="*", help="reads of each sample")
    parser.add_argument("--shared", type=int, default=0, help="reads every sample holds")
    parser.add_argument("--other", type=Path, help="a checkout to compare (C)")
    parser.add_argument("--memory", type=int, nargs="*", default=[1, 20])
    parser.add_argument("--work", type=Path, default=Path("bench-sequencing-run"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {psutil.cpu_count()} CPUs, load average {psutil.getloadavg()[0]:.1f}")

    sizes = args.sizes or [args.reads] * args.samples
    sheet = samples(args.work, sizes, args.shared)
    files = [args.work / line.split(",")[3] for line in sheet.read_text().splitlines()[1:]]
    print(
        f"\nsamples of {', '.join(map(str, sizes))} reads (+{args.shared} shared by all): "
        "one --samplesheet run (A) against one run per sample (B)"
        + (f", and one --samplesheet run of {args.other} (C)" if args.other else "")
    )
    print("| round | A: one run | B: one run per sample | A / B | A | C | C / A | model C / A |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(1, args.rounds + 1):
        a, _, _ = timed(command("--samplesheet", str(sheet), "--out", str(args.work / "run")))
        a_figures, a_model = run_figures(args.work / "run")
        b = 0.0
        for k, path in enumerate(files):
            b += timed(command(str(path), "--out", str(args.work / f"alone_{k:03d}")))[0]
        c, c_figures, c_model = None, "", 0.0
        if args.other:
            env = {**os.environ, "PYTHONPATH": str(args.other.resolve())}
            cmd = command("--samplesheet", str(sheet), "--out", str(args.work / "run_other"))
            c = timed(cmd, env=env)[0]
            c_figures, c_model = run_figures(args.work / "run_other")
        print(
            f"| {r} | {a:.1f} s | {b:.1f} s | {a / b:.2f} | {a_figures} | "
            + (
                f"{c:.1f} s, {c_figures} | {c / a:.2f} | {c_model / a_model:.2f} |"
                if c
                else "| | |"
            ),
            flush=True,
        )

    if args.memory:
        print("\npeak memory of --samplesheet runs")
        print("| samples | reads | wall | peak client RSS | peak worker RSS |")
        print("|---|---|---|---|---|")
        for n in args.memory:
            sheet = samples(args.work, [args.reads] * n)
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
