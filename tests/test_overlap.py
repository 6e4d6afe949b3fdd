"""Embedding and writing are separate tasks: only embedding holds the device."""

from __future__ import annotations

from distributed import get_task_stream
from helpers import tiny_settings

from virnuc_dask.dataflow.pipeline import predict


def _restrictions(dask_scheduler) -> dict[str, dict | None]:
    return {str(key): ts.resource_restrictions for key, ts in dask_scheduler.tasks.items()}


def test_store_runs_as_its_own_unrestricted_task(client, reference, tmp_path):
    seen: dict[str, dict | None] = {}

    def progress(event):
        # Once the first partition is stored, the others' tasks are on the scheduler.
        if event.stage == "embed" and event.done == 1:
            seen.update(client.run_on_scheduler(_restrictions))

    settings = tiny_settings(
        [reference / "dev" / "mixed" / "input.fa"], tmp_path, partition_rows=16
    )
    with get_task_stream(client) as stream:
        result = predict(settings, client, progress=progress)
    assert result.exit_code == 0 and result.partitions >= 4

    embeds = {k: r for k, r in seen.items() if k.startswith("embed-")}
    stores = {k: r for k, r in seen.items() if k.startswith("store-embeddings-")}
    assert embeds and stores
    assert all(r == {"GPU": 1} for r in embeds.values())
    assert all(not r for r in stores.values())
    slices = [r for k, r in seen.items() if k.startswith("partition-")]
    assert all(not r for r in slices)

    # Every partition was embedded once and stored once, each store on its embedding's
    # worker (the rows are not moved between workers), and the store's time is its own.
    keys = [t for t in stream.data if isinstance(t["key"], str)]
    embedded = [t for t in keys if t["key"].startswith("embed-")]
    stored = [t for t in keys if t["key"].startswith("store-embeddings-")]
    assert len(embedded) == len(stored) == result.partitions
    assert {t["worker"] for t in stored} <= {t["worker"] for t in embedded}
    summary = result.summary
    (worker,) = summary["workers"].values()
    assert worker["partitions"] == result.partitions
    assert worker["store_seconds"] > 0
