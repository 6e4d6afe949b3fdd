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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

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


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, *, interval: float = 0.1, what: str = ""
) -> T:
    """Call ``predicate`` until it returns a true value, and return that value; after
    ``timeout`` seconds an AssertionError saying what was awaited (``what``, or the
    predicate's name) and for how long."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still waiting after {timeout:g} s for {what or predicate.__name__}"
            )
        time.sleep(interval)
    return value


def in_process_cluster(n_workers: int = 1):
    """A LocalCluster of ``n_workers`` in-process workers of one thread each."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=":0"
    )


def tiny_settings(inputs, out, *, length: int = 300, **overrides):
    """The settings of a run of ``inputs`` (paths) into ``out`` on the tiny models in fp32
    at ``length``; ``overrides`` (settings by name) on top."""
    from virnuc_dask.config import load_settings

    values = {"out": str(out), "length": length, "precision": "fp32", **TINY, **overrides}
    return load_settings(inputs=[str(p) for p in inputs], overrides=values)


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


SCORE_TOLERANCE = 1e-5  # the parity contract: scores from another CPU or GPU agree this well


def _field_differs(got: str, want: str, tolerance: float) -> bool:
    if got == want:
        return False
    try:
        return abs(float(got) - float(want)) > tolerance
    except ValueError:
        return True


def assert_same_table(
    actual: str, expected: str, *, name: str = "table", tolerance: float = SCORE_TOLERANCE
) -> None:
    """Two tab-separated result tables hold the same rows: text fields (ids, labels, counts
    written as text) exactly, numbers within ``tolerance``. Float results differ in their last
    digits between CPUs (kernels chosen by instruction set), so they are never compared as
    bytes across machines."""
    got_lines, want_lines = actual.splitlines(), expected.splitlines()
    assert len(got_lines) == len(want_lines), (
        f"{name}: {len(got_lines)} lines, expected {len(want_lines)}"
    )
    for number, (got, want) in enumerate(zip(got_lines, want_lines, strict=True), start=1):
        got_fields, want_fields = got.split("\t"), want.split("\t")
        assert len(got_fields) == len(want_fields) and not any(
            _field_differs(g, w, tolerance) for g, w in zip(got_fields, want_fields, strict=True)
        ), f"{name} line {number}: {got!r}, expected {want!r} (numbers within {tolerance:g})"


def assert_matches_reference(out: Path, ref: Path) -> None:
    """``out`` holds what the original wrote in ``ref``: ids, calls, scores within 1e-5,
    the per-chunk file byte for byte, both embeddings within 1e-5 (when the run kept
    them; the store's ids always)."""
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
        if group.attrs["embeddings"] is None:
            assert array not in group
            continue
        # Copies of an input read their first copy's row (the store's ``<model>_source``).
        assert np.abs(read_rows(group, array, 0, len(ids)) - expected).max() <= 1e-5


# VirNucPro's classifier class as its prediction script defines it in ``__main__``: a
# script that starts with this loads a pickled model the original way (torch.load).
ORIGINAL_MLP_SOURCE = """
import torch
import torch.nn.functional as F
from torch import nn


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super(MLPClassifier, self).__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)
"""

# Coding-like reads: random sense codons, so most frames of most chunks are stop-free.
SENSE_CODONS = [
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
            seq = "".join(rng.choices(SENSE_CODONS, k=length // 3 + 1))[:length]
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
        seqs.append("".join(rng.choices(SENSE_CODONS, k=length // 3 + 1))[:length])
    order = seqs + [rng.choice(seqs) for _ in range(n - unique)]
    rng.shuffle(order)
    with open(path, "w") as fh:
        for i, seq in enumerate(order):
            fh.write(f">{prefix}_{i + 1:06d}\n{seq}\n")
    return path


def _wait_for_file(path: Path, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    def written() -> bool:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        return path.is_file()

    wait_until(written, timeout, interval=0.2, what=str(path))


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


def write_mates(
    r1: Path, r2: Path, *, n: int = 20, style: str = "casava", offset: int = 0
) -> tuple[Path, Path]:
    """Two mate files of ``n`` pairs cut from the reference reads (mate 1 the first
    half of a read, mate 2 its second half); ``style``: ``casava`` (``@id 1:N:0:…``)
    or ``slash`` (``@id/1``); gzip when a name ends in ``.gz``. ``offset``: the first
    read used (different offsets give different samples)."""
    import gzip

    reads = read_fasta_pairs(REFERENCE / "dev" / "basic" / "input.fa")
    for path, mate in ((r1, 1), (r2, 2)):
        lines = []
        for k in range(n):
            _, seq = reads[(offset + k) % len(reads)]
            half = seq[: len(seq) // 2] if mate == 1 else seq[len(seq) // 2 :]
            rid = f"M00123:45:000000000-A1B2C:1:1101:{15589 + offset + k}:1332"
            title = f"{rid} {mate}:N:0:ATCACG" if style == "casava" else f"{rid}/{mate}"
            lines.append(f"@{title}\n{half}\n+\n{'F' * len(half)}\n")
        data = "".join(lines).encode()
        path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return r1, r2


def write_sequencing_run(folder: Path) -> Path:
    """Four samples and their sheet in ``folder``: ``casava`` (paired FASTQ.gz over two
    lanes), ``slash`` (paired ``/1`` ``/2`` FASTQ), ``single`` (single-end FASTQ) and
    ``contigs`` (FASTA). Returns the sheet's path (paths in it are relative)."""
    folder.mkdir(parents=True, exist_ok=True)
    reads = read_fasta_pairs(REFERENCE / "dev" / "basic" / "input.fa")
    write_mates(folder / "casava_L001_R1_001.fastq.gz", folder / "casava_L001_R2_001.fastq.gz")
    write_mates(
        folder / "casava_L002_R1_001.fastq.gz", folder / "casava_L002_R2_001.fastq.gz", offset=20
    )
    write_mates(folder / "slash_1.fq", folder / "slash_2.fq", n=12, style="slash", offset=40)
    (folder / "single.fq").write_text(
        "".join(f"@single_{k}\n{s}\n+\n{'F' * len(s)}\n" for k, (_, s) in enumerate(reads[52:66]))
    )
    (folder / "contigs.fa").write_text("".join(f">{i}\n{s}\n" for i, s in reads[66:80]))
    sheet = folder / "samples.csv"
    sheet.write_text(
        "sample,fastq_1,fastq_2,fasta\n"
        "casava,casava_L001_R1_001.fastq.gz,casava_L001_R2_001.fastq.gz,\n"
        "casava,casava_L002_R1_001.fastq.gz,casava_L002_R2_001.fastq.gz,\n"
        "slash,slash_1.fq,slash_2.fq,\n"
        "single,single.fq,,\n"
        "contigs,,,contigs.fa\n"
    )
    return sheet
