"""Test data and helpers shared by the test modules.

Everything lives inside the repository: ``tests/data/reference`` holds the inputs and
the outputs the original VirNucPro code produced on tiny models stored in the real
formats (see its README); larger inputs are generated deterministically.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "reference"
CASES = sorted(p.name for p in (REFERENCE / "dev").iterdir() if p.is_dir())
LENGTHS = (300, 500)
BIN = Path(sys.executable).parent
TINY = {
    "esm_model": str(REFERENCE / "models" / "esm2_t2_64_tiny.pt"),
    "dnabert_model": str(REFERENCE / "models" / "dnabert_s_tiny"),
    "classifier": str(REFERENCE / "models" / "mlp_tiny.pth"),
}


def model_flags(length: int = 300, **models: str) -> list[str]:
    """``--length``, the tiny models (or ``models``) and fp32, as command-line flags."""
    chosen = {**TINY, **models}
    return [
        "--length",
        str(length),
        "--esm-model",
        chosen["esm_model"],
        "--dnabert-model",
        chosen["dnabert_model"],
        "--classifier",
        chosen["classifier"],
        "--precision",
        "fp32",
    ]


def predict_command(*inputs: object, length: int = 300, **models: str) -> list[str]:
    """``python -m virnuc_dask predict INPUTS`` with :func:`model_flags`; add the rest."""
    return [
        sys.executable,
        "-m",
        "virnuc_dask",
        "predict",
        *map(str, inputs),
        *model_flags(length, **models),
    ]


def read_fasta_pairs(path: Path) -> list[tuple[str, str]]:
    from Bio import SeqIO

    return [(r.id, str(r.seq)) for r in SeqIO.parse(str(path), "fasta")]


def read_embeddings_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path) as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    ids = [r[0] for r in rows[1:]]
    return ids, np.array([[float(x) for x in r[1:]] for r in rows[1:]], dtype=np.float32)


def read_results(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    lines = path.read_text().splitlines()
    assert lines[0] == "Sequence_ID\tPrediction\tscore1\tscore2"
    rows = [line.split("\t") for line in lines[1:]]
    return [(r[0], r[1]) for r in rows], np.array([[float(r[2]), float(r[3])] for r in rows])


def assert_matches_reference(out: Path, ref: Path) -> None:
    """``out`` holds what the original wrote in ``ref``: ids, calls, scores within 1e-5,
    the per-chunk file byte for byte, both embeddings within 1e-5."""
    import zarr

    from virnuc_dask.dataflow.store import read_rows

    labels, scores = read_results(out / "prediction_results.txt")
    ref_labels, ref_scores = read_results(ref / "prediction_results.txt")
    assert labels == ref_labels
    assert np.abs(scores - ref_scores).max() <= 1e-5
    assert (out / "prediction_results_highestscore.csv").read_bytes() == (
        ref / "prediction_results_highestscore.csv"
    ).read_bytes()
    group = zarr.open_group(out / "embeddings.zarr", mode="r")
    for array, tsv in (("dnabert", "dnabert_s_embeddings.tsv"), ("esm", "esm_embeddings.tsv")):
        ids, expected = read_embeddings_tsv(ref / tsv)
        assert list(group["ids"][:]) == ids
        # Copies of an input read their first copy's row (the store's ``<model>_source``).
        assert np.abs(read_rows(group, array, 0, len(ids)) - expected).max() <= 1e-5


# Coding-like reads: random sense codons, so most frames of most chunks are stop-free.
_SENSE = [
    a + b + c
    for a in "ACGT"
    for b in "ACGT"
    for c in "ACGT"
    if a + b + c not in ("TAA", "TAG", "TGA")
]


def write_perf_reads(
    path: Path,
    n: int,
    *,
    seed: int = 2,
    prefix: str = "perf",
    min_length: int = 400,
    max_length: int = 600,
) -> Path:
    """``n`` coding-like reads, ``min_length``–``max_length`` bp, upper case, wrapped at 60
    (the shape of a sequencer's assembled reads); the same file for the same arguments."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            length = rng.randint(min_length, max_length)
            seq = "".join(rng.choices(_SENSE, k=length // 3 + 1))[:length]
            fh.write(f">{prefix}_{i + 1:06d}\n")
            for j in range(0, length, 60):
                fh.write(seq[j : j + 60] + "\n")
    return path


def write_duplicated_reads(
    path: Path, n: int, *, share: float = 0.3, seed: int = 3, prefix: str = "dup"
) -> Path:
    """``n`` coding-like reads of which ``share`` are exact copies (new ids) of others,
    scattered through the file, as PCR duplicates are."""
    rng = random.Random(seed)
    unique = n - round(n * share)
    seqs = []
    for _ in range(unique):
        length = rng.randint(400, 600)
        seqs.append("".join(rng.choices(_SENSE, k=length // 3 + 1))[:length])
    order = seqs + [rng.choice(seqs) for _ in range(n - unique)]
    rng.shuffle(order)
    with open(path, "w") as fh:
        for i, seq in enumerate(order):
            fh.write(f">{prefix}_{i + 1:06d}\n{seq}\n")
    return path


def _wait_for_file(path: Path, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


@contextlib.contextmanager
def hand_started_cluster(
    base: Path, workers: Mapping[str, Mapping[str, str]], *, nthreads: int = 1
) -> Iterator[tuple[object, Path]]:
    """`dask scheduler` and one `dask worker` (with its nanny) per ``workers`` entry
    (name: extra environment), started as a user starts them by hand, in another working
    directory than the client; yields a connected ``Client`` and the scheduler file."""
    from distributed import Client

    from virnuc_dask.cluster.workers import WORKER_ENV_VALUE, WORKER_ENV_VARIABLE

    elsewhere = base / "worker-cwd"
    elsewhere.mkdir(parents=True)
    scheduler_file = base / "scheduler.json"
    env = {**os.environ, WORKER_ENV_VARIABLE: WORKER_ENV_VALUE}
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    dask = str(BIN / "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": elsewhere}
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--port", "0", "--dashboard-address", ":0"]
            + ["--scheduler-file", str(scheduler_file)],
            env=env,
            **quiet,
        )
    ]
    try:
        _wait_for_file(scheduler_file, procs)
        for name, extra in workers.items():
            procs.append(
                subprocess.Popen(
                    [dask, "worker", "--scheduler-file", str(scheduler_file)]
                    + ["--nthreads", str(nthreads), "--resources", "GPU=1", "--name", name]
                    + ["--dashboard-address", ":0", "--local-directory", str(elsewhere)],
                    env={**env, **extra},
                    **quiet,
                )
            )
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(len(workers), timeout=120)
            yield client, scheduler_file
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def two_workers(scheduler_port: int = 0, **envs: dict[str, str]):
    """A cluster of one nanny-run worker per ``envs`` entry, each with its environment
    (an in-process scheduler)."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        name: {"cls": Nanny, "options": {"nthreads": 1, "env": env, "resources": {"GPU": 1}}}
        for name, env in envs.items()
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0", "port": scheduler_port}}
    return SpecCluster(workers=workers, scheduler=scheduler, asynchronous=False)
