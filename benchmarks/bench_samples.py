"""Memory and time of whole runs as samples grow, and what deduplication saves.

    python benchmarks/bench_samples.py [--reads 20000 200000 1000000] [--dup-reads 20000]
                                       [--work DIR] [--interval 0.2]

Each run is ``virnuc-dask predict`` as a user starts it (a subprocess; one local
worker with two threads; the tiny models of ``tests/data/reference/models``, fp32,
500 bp). A sampler thread reads the resident set size of the client process and of
every process it starts (the worker, its nanny's helpers) from ``psutil`` every
``--interval`` seconds; the table gives each run's peak per process, wall time and
reads/s (from ``run_summary.json``).

Inputs are generated (coding-like reads of 400-600 bp, the shape of the perf
inputs) and kept in ``--work`` for later runs. The dedup figures come from an input
of ``--dup-reads`` reads of which 30 % are exact copies of others, run with and
without ``--no-dedup``.

``--distinct K`` makes every read a copy of one of K sequences: with dedup the model
work is that of K reads whatever ``--reads`` is, while reading, translating, the
scratch, the dedup buckets, partitions, classification and result files scale with
``--reads``: the memory of everything but the models, for samples too large to embed
on a small machine: the embedding stage's time of each and their ratio, and the
unique/total inputs per model.

The script prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "reference" / "models"
TINY = {
    "--esm-model": MODELS / "esm2_t2_64_tiny.pt",
    "--dnabert-model": MODELS / "dnabert_s_tiny",
    "--classifier": MODELS / "mlp_tiny.pth",
}
_SENSE = [
    a + b + c
    for a in "ACGT"
    for b in "ACGT"
    for c in "ACGT"
    if a + b + c not in ("TAA", "TAG", "TGA")
]
MIB = 2**20


def write_reads(
    path: Path, n: int, *, duplicate_share: float = 0.0, distinct: int = 0, seed: int = 7
) -> Path:
    """``n`` coding-like reads of 400-600 bp; ``duplicate_share`` of them copies of others
    (or, ``distinct`` > 0: every read a copy of one of ``distinct`` sequences)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    if distinct:
        pool = []
        for _ in range(distinct):
            length = rng.randint(400, 600)
            pool.append("".join(rng.choices(_SENSE, k=length // 3 + 1))[:length])
        with open(path.with_suffix(".tmp"), "w") as fh:
            for i in range(n):
                fh.write(f">read_{i + 1:08d}\n{pool[i % distinct]}\n")
        path.with_suffix(".tmp").rename(path)
        return path
    unique = n - round(n * duplicate_share)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        seqs: list[str] = []
        for i in range(n):
            if i < unique:
                length = rng.randint(400, 600)
                seq = "".join(rng.choices(_SENSE, k=length // 3 + 1))[:length]
                if duplicate_share:
                    seqs.append(seq)
            else:
                seq = rng.choice(seqs)
            fh.write(f">read_{i + 1:08d}\n{seq}\n")
    if duplicate_share:  # copies scattered through the file, as PCR duplicates are
        lines = tmp.read_text().splitlines()
        records = [lines[k : k + 2] for k in range(0, len(lines), 2)]
        rng.shuffle(records)
        tmp.write_text("".join(f"{h}\n{s}\n" for h, s in records))
    tmp.rename(path)
    return path


class Sampler(threading.Thread):
    """Peak RSS of a process and of each of its descendants, sampled every ``interval``."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peaks: dict[int, tuple[int, str]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    name = " ".join(proc.cmdline()[:3])
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if rss > self.peaks.get(proc.pid, (0, ""))[0]:
                    self.peaks[proc.pid] = (rss, name)
            self.stop.wait(self.interval)


def predict_command(*args: str) -> list[str]:
    """``virnuc-dask predict ARGS`` as these benchmarks run it: one local worker, the tiny
    models, fp32, 500 bp, ``--overwrite`` (nothing reused), quiet."""
    return [
        sys.executable,
        "-m",
        "virnuc_dask",
        "predict",
        *args,
        "--length",
        "500",
        "--precision",
        "fp32",
        "--workers",
        "1",
        "--overwrite",
        "--quiet",
        *[str(x) for kv in TINY.items() for x in kv],
    ]


def sampled(
    command: list[str], interval: float, *, env: dict[str, str] | None = None
) -> tuple[float, int, list[int]]:
    """Run ``command`` (exit 0 or 2 expected; ``env``: its environment); its wall seconds,
    the peak RSS of its process and those of every process it started, largest first."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    sampler = Sampler(proc.pid, interval)
    sampler.start()
    _, stderr = proc.communicate(timeout=6 * 3600)
    wall = time.perf_counter() - t
    sampler.stop.set()
    sampler.join(timeout=10)
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"{command} exited {proc.returncode}:\n{stderr}")
    client = sampler.peaks.get(proc.pid, (0, ""))[0]
    others = sorted(
        (rss for pid, (rss, _) in sampler.peaks.items() if pid != proc.pid), reverse=True
    )
    return wall, client, others


def run(reads: Path, out: Path, interval: float, *extra: str) -> dict:
    wall, client, others = sampled(predict_command(str(reads), "--out", str(out), *extra), interval)
    summary = json.loads((out / "run_summary.json").read_text())
    return {
        "reads": summary["counts"]["reads"],
        "orfs": summary["counts"]["orfs"],
        "wall_s": wall,
        "run_s": summary["timings_s"]["total"],
        "reads_per_s": summary["reads_per_s"],
        "embed_s": summary["timings_s"]["embed"],
        "model_s": sum(s["seconds"] for s in summary["embedding"].values()),
        "dedup": summary.get("dedup"),
        "client_mib": client / MIB,
        "worker_mib": (others[0] / MIB) if others else 0.0,
        "other_mib": [round(x / MIB) for x in others[1:]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, nargs="*", default=[20_000, 200_000])
    parser.add_argument(
        "--dup-reads", type=int, default=20_000, help="reads of the 30 %% duplicate input (0: skip)"
    )
    parser.add_argument(
        "--distinct",
        type=int,
        default=0,
        metavar="K",
        help="reads are copies of K distinct sequences: the model work stays "
        "that of K reads while everything else scales with --reads",
    )
    parser.add_argument("--work", type=Path, default=Path("bench-samples"))
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    load = psutil.getloadavg()
    print(f"machine: {psutil.cpu_count()} CPUs, load average {load[0]:.1f} at start")
    print("| input | ORFs | wall | reads/s | peak worker RSS | peak client RSS | other |")
    print("|---|---|---|---|---|---|---|")
    for n in args.reads:
        name = f"reads_{n}_of_{args.distinct}" if args.distinct else f"reads_{n}"
        reads = write_reads(args.work / f"{name}.fa", n, distinct=args.distinct)
        r = run(reads, args.work / f"out_{name}", args.interval)
        label = f"{n:,} reads" + (f" ({args.distinct:,} distinct)" if args.distinct else "")
        print(
            f"| {label} | {r['orfs']:,} | {r['run_s']:.0f} s | {r['reads_per_s']:.0f} | "
            f"{r['worker_mib']:.0f} MiB | {r['client_mib']:.0f} MiB | "
            f"{r['other_mib']} MiB |",
            flush=True,
        )
    if args.dup_reads:
        reads = write_reads(
            args.work / f"dup30_{args.dup_reads}.fa", args.dup_reads, duplicate_share=0.3, seed=11
        )
        every = run(reads, args.work / "dup_all", args.interval, "--no-dedup")
        once = run(reads, args.work / "dup_once", args.interval)
        print(f"\n30 % duplicate reads ({args.dup_reads:,} reads, {once['orfs']:,} ORFs):")
        for model in ("dnabert", "esm"):
            d = once["dedup"][model]
            print(
                f"  {model}: {d['unique']:,} unique of {d['total']:,} inputs "
                f"({d['unique'] / d['total']:.1%})"
            )
        print(
            f"  embedding stage: {every['embed_s']:.1f} s without dedup, {once['embed_s']:.1f}"
            f" s with: ratio {once['embed_s'] / every['embed_s']:.2f}"
        )
        print(
            f"  model time: {every['model_s']:.1f} s without, {once['model_s']:.1f} s with: "
            f"ratio {once['model_s'] / every['model_s']:.2f}"
        )
        print(f"  whole run: {every['run_s']:.1f} s without, {once['run_s']:.1f} s with")
    load = psutil.getloadavg()
    print(f"load average {load[0]:.1f} at the end (the machine may be shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
