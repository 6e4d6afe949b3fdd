"""Shared fixtures; data and helpers live in ``helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import REFERENCE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (CI=true) a skipped ``slurm`` test fails: CI must prove the real scheduler."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("slurm"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: a slurm test was skipped under CI=true ({reason}); "
            "CI must install slurm-wlm and munge and run as root (.ci/run)"
        )


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real one-node SLURM (munged, slurmctld, slurmd) for this session; see slurm_cluster.

    Yields the :class:`slurm_cluster.LocalSlurm`; its ``env()`` makes sbatch, srun,
    squeue and scancel talk to it. Skipped without the programs or without root.
    """
    from slurm_cluster import LocalSlurm, missing_programs

    missing = missing_programs()
    if missing:
        pytest.skip(
            f"SLURM is not installed (missing {', '.join(missing)}; "
            "apt-get install slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        pytest.skip("the test SLURM runs slurmd, which starts jobs, as root")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start(timeout=90)
    try:
        yield cluster
    finally:
        cluster.cancel_all()
        cluster.stop()


@pytest.fixture
def other_user():
    """A real second Unix user for the test (skipped unless running as root); see probe."""
    from probe import other_user

    with other_user() as user:
        yield user


@pytest.fixture(scope="session")
def reference() -> Path:
    """The original program's inputs, models and outputs (``tests/data/reference``)."""
    return REFERENCE


@pytest.fixture(scope="session")
def reads_2k(tmp_path_factory) -> Path:
    """2,000 coding-like reads of 400–600 bp (generated, the same every run)."""
    from helpers import write_perf_reads

    return write_perf_reads(
        tmp_path_factory.mktemp("perf") / "reads_2k.fa", 2000, seed=2, prefix="perf2k"
    )


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a 2-core machine: one torch thread avoids OpenMP barrier stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def client():
    """A one-worker LocalCluster in this process, with the CLI's worker settings and the
    ``GPU`` resource (module-scoped); tests of worker processes start their own."""
    import dask
    from distributed import Client, LocalCluster

    from virnuc_dask.cluster.workers import WORKER_ENV

    with (
        dask.config.set(WORKER_ENV),
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            resources={"GPU": 1},
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
