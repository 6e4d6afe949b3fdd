"""Shared fixtures: the reference data beside the checkout, and small helpers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
CASES = sorted(p.name for p in (REFERENCE / "dev").iterdir() if p.is_dir()) \
    if (REFERENCE / "dev").is_dir() else []
LENGTHS = (300, 500)
TINY = {
    "esm_model": str(REFERENCE / "models" / "esm2_t2_64_tiny.pt"),
    "dnabert_model": str(REFERENCE / "models" / "dnabert_s_tiny"),
    "classifier": str(REFERENCE / "models" / "mlp_tiny.pth"),
}


def need_reference() -> None:
    if not REFERENCE.is_dir():
        pytest.skip("reference data (../shared/reference) not present")


def read_fasta_pairs(path: Path) -> list[tuple[str, str]]:
    from Bio import SeqIO

    return [(r.id, str(r.seq)) for r in SeqIO.parse(str(path), "fasta")]


def read_embeddings_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path) as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    ids = [r[0] for r in rows[1:]]
    return ids, np.array([[float(x) for x in r[1:]] for r in rows[1:]], dtype=np.float32)


@pytest.fixture(scope="session")
def reference() -> Path:
    need_reference()
    return REFERENCE


@pytest.fixture(scope="module")
def client():
    """A one-worker in-process LocalCluster as the CLI starts it (module-scoped)."""
    import dask
    from distributed import Client, LocalCluster

    from virnuc_dask.cluster import WORKER_ENV

    need_reference()
    with dask.config.set(WORKER_ENV), \
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                         resources={"GPU": 1}, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client
