"""How busy the devices were over a whole sequencing run: for each worker that embedded,
its time inside the models' forwards, summed over the partitions of every sample
computed in this run, over the time from its models being ready (or the run's start, if
later) to the run's end. A one-sample run gives the same figure per run
(``run_summary.json`` ``workers``); over a sheet it shows whether the devices waited
between samples."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distributed import Client

from virnuc_dask.dataflow.models_on_workers import model_status
from virnuc_dask.dataflow.store import EmbeddingStore
from virnuc_dask.models.registry import MODEL_KEYS


def devices_busy(
    client: Client, outs: Iterable[Path], span: tuple[float, float]
) -> dict[str, dict[str, Any]]:
    """Per worker address: ``partitions``, ``model_seconds`` and ``device_busy`` over
    ``span`` (``time.time()`` start and end) of the samples stored under ``outs``."""
    workers: dict[str, dict[str, Any]] = {}
    for out in outs:
        store = EmbeddingStore(out)
        if not store.exists():
            continue
        for entry in store.entries().values():
            if entry.finished is None or entry.finished < span[0]:
                continue  # finished by an earlier run
            w = workers.setdefault(entry.worker, {"partitions": 0, "model_seconds": 0.0})
            w["partitions"] += 1
            w["model_seconds"] += sum(entry.models[m].seconds for m in MODEL_KEYS)
    statuses = model_status(client)
    for address, w in workers.items():
        ready = statuses.get(address, {}).get("ready_at") or span[0]
        start = max(ready, span[0])
        w["model_seconds"] = round(w["model_seconds"], 3)
        w["device_busy"] = round(w["model_seconds"] / (span[1] - start), 4)
    return workers
