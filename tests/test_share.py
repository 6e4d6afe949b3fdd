"""Heterogeneous devices: with Dask's dynamic scheduling a faster worker simply takes more
partitions. Two in-process workers, one slowed by a delay in every ESM-2 forward (a
slower GPU); the run summary reports each worker's share and rate."""

from __future__ import annotations

import time

import pytest
from distributed import Client, LocalCluster, get_worker
from helpers import REFERENCE, tiny_settings, wait_until

from virnuc_dask.dataflow import models_on_workers
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.models.esm_fast import SdpaEsm2

INPUT = REFERENCE / "dev" / "basic" / "input.fa"
DELAY_S = 1.0


def test_the_faster_worker_takes_a_proportionally_larger_share(tmp_path, monkeypatch):
    real = SdpaEsm2.forward

    def forward(self, *args, **kwargs):
        if get_worker().name == "slow":
            time.sleep(DELAY_S)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SdpaEsm2, "forward", forward)
    # The run starts once one worker has its models; here both must take part from the
    # start (on a loaded machine one may finish loading well after the other).
    real_wait = models_on_workers.wait_for_models

    def wait_for_both(client, **kwargs):
        def both_ready():
            statuses = real_wait(client, **kwargs)
            return statuses if [s["state"] for s in statuses.values()] == ["ready"] * 2 else None

        return wait_until(both_ready, 120, interval=0.2, what="both workers' models")

    monkeypatch.setattr(models_on_workers, "wait_for_models", wait_for_both)
    settings = tiny_settings([INPUT], tmp_path, blocksize=4096, partition_rows=6, threads=1)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        from distributed import Worker

        cluster.scale(0)
        cluster.worker_spec = {
            name: {"cls": Worker, "options": {"nthreads": 2, "name": name, "resources": {"GPU": 1}}}
            for name in ("fast", "slow")
        }
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=30)
            names = {
                a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
            }
            result = predict(settings, client)
    assert not result.summary["workers_failed"], result.summary["workers_failed"]
    workers = {names[a]: w for a, w in result.summary["workers"].items()}
    fast, slow = workers["fast"], workers["slow"]
    figures = (
        f"fast: {fast['partitions']} partitions, share {fast['share']:.3f}, "
        f"{fast['orfs_per_s']:.1f} ORF/s; slow: {slow['partitions']} partitions, share "
        f"{slow['share']:.3f}, {slow['orfs_per_s']:.1f} ORF/s"
    )
    assert result.exit_code == 0 and result.partitions >= 12
    # Each share is a fraction of the ORFs embedded: together, all of them.
    assert fast["share"] + slow["share"] == pytest.approx(1.0, abs=1e-9), figures
    assert fast["orfs_per_s"] > 2 * slow["orfs_per_s"], figures
    # Shares follow the rates: the expected split is rate / total rate.
    expected = fast["orfs_per_s"] / (fast["orfs_per_s"] + slow["orfs_per_s"])
    assert fast["share"] > 0.6 and abs(fast["share"] - expected) < 0.2, figures
    assert fast["partitions"] > slow["partitions"] >= 1, figures
