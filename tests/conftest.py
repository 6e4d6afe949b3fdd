"""Shared fixtures; data and helpers live in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REFERENCE


@pytest.fixture(scope="session")
def reference() -> Path:
    """The original program's inputs, models and outputs (``tests/data/reference``)."""
    return REFERENCE


@pytest.fixture(scope="session")
def reads_2k(tmp_path_factory) -> Path:
    """2,000 coding-like reads of 400–600 bp (generated, the same every run)."""
    from helpers import write_perf_reads

    return write_perf_reads(tmp_path_factory.mktemp("perf") / "reads_2k.fa", 2000, seed=2,
                            prefix="perf2k")


@pytest.fixture(scope="module")
def client():
    """A one-worker in-process LocalCluster as the CLI starts it (module-scoped)."""
    import dask
    from distributed import Client, LocalCluster

    from virnuc_dask.cluster.start import WORKER_ENV

    with dask.config.set(WORKER_ENV), \
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                         resources={"GPU": 1}, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client
