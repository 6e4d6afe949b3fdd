"""``run_summary.json``: what a run did, where and how fast, per stage, model and worker."""

from __future__ import annotations

import dataclasses
import logging
import platform
import socket
import time
from typing import Any

from distributed import Client

from virnuc_dask import __version__
from virnuc_dask.config import Settings
from virnuc_dask.dataflow.dashboard import gpu_metrics
from virnuc_dask.dataflow.models_on_workers import load_failures, model_status
from virnuc_dask.dataflow.outputs import BlockCounts
from virnuc_dask.models import EMBEDDING_MODELS, MODEL_KEYS
from virnuc_dask.partition_result import PartitionResult

logger = logging.getLogger(__name__)


def run_summary(
    settings: Settings,
    client: Client,
    facts: dict[str, Any],
    total: BlockCounts,
    plan: list[tuple[int, list[tuple[int, int, int]]]],
    todo: list[int],
    partition_stats: list[PartitionResult],
    timings: dict[str, float],
    *,
    span: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The content of ``run_summary.json`` (see the documentation for its fields).

    ``span``: the run's start and end (``time.time()``); with it each worker that
    embedded gets ``device_busy``: its time inside the models' forwards over the time
    from its models being ready (or the run's start, if later) to the run's end (the
    last result written).
    """
    workers: dict[str, dict[str, Any]] = {}
    # ``orfs``: the ORFs of the computed partitions; ``embedded``: those the model ran on
    # (the first copy of each input, with dedup).
    stages = {
        m: {
            "orfs": 0,
            "embedded": 0,
            "batches": 0,
            "real_tokens": 0,
            "padded_tokens": 0,
            "oom_splits": 0,
            "seconds": 0.0,
        }
        for m in MODEL_KEYS
    }
    for entry in partition_stats:
        w = workers.setdefault(
            entry.worker,
            {
                "partitions": 0,
                "orfs": 0,
                "seconds": 0.0,
                "store_seconds": 0.0,
                "tokens": dict.fromkeys(MODEL_KEYS, 0),
                "model_seconds": dict.fromkeys(MODEL_KEYS, 0.0),
            },
        )
        w["partitions"] += 1
        w["orfs"] += entry.rows  # copies included
        w["seconds"] += sum(entry.models[m].seconds for m in MODEL_KEYS)
        w["store_seconds"] += entry.store_seconds
        for m in MODEL_KEYS:
            stats = entry.models[m]
            w["tokens"][m] += stats.real_tokens
            w["model_seconds"][m] += stats.seconds
            stage = stages[m]
            stage["orfs"] += stats.rows
            stage["embedded"] += stats.sequences
            for key in ("batches", "real_tokens", "padded_tokens", "oom_splits", "seconds"):
                stage[key] += getattr(stats, key)
    computed = sum(w["orfs"] for w in workers.values())
    info = client.scheduler_info(n_workers=-1)
    statuses = model_status(client)
    for w in workers.values():
        w["orfs_per_s"] = w["orfs"] / w["seconds"] if w["seconds"] else None
        w["tokens_per_s"] = {
            m: w["tokens"][m] / s if s else None for m, s in w["model_seconds"].items()
        }
        # Dynamic scheduling: a faster device takes a larger share of the partitions.
        w["share"] = w["orfs"] / computed if computed else None
    for address, status in statuses.items():
        if status["state"] != "ready":
            continue
        w = workers.setdefault(address, {"partitions": 0, "orfs": 0, "share": 0.0})
        w.update(
            device=status["device"],
            precision=status["precision"],
            device_name=status.get("device_info", {}).get("name"),
            tf32=status.get("matmul"),
            threads=status.get("threads"),
            gpu=gpu_metrics(
                info["workers"].get(address, {}), status.get("memory"), status.get("gpu")
            ),
        )
        if span is not None and w.get("seconds"):
            start = max(status.get("ready_at") or span[0], span[0])
            w["device_busy"] = round(w["seconds"] / (span[1] - start), 4)
    failed_workers = [
        {k: f.get(k) for k in ("worker", "host", "device", "error")}
        for f in load_failures(client, run=facts["run"])
    ]
    for stage in stages.values():
        stage["tokens_per_s"] = (
            stage["real_tokens"] / stage["seconds"] if stage["seconds"] else None
        )
        stage["padding_efficiency"] = (
            stage["real_tokens"] / stage["padded_tokens"] if stage["padded_tokens"] else None
        )
    nthreads = {a: w.get("nthreads") for a, w in info["workers"].items()}
    return {
        "version": __version__,
        "status": "partial" if total.failed else "complete",
        "inputs": list(settings.inputs),
        "length": settings.length,
        "models": {
            **{
                m.key: {"source": m.source(settings), "dim": facts[m.key]} for m in EMBEDDING_MODELS
            },
            "classifier": {"source": settings.classifier, "input_dim": facts["classifier_input"]},
        },
        "precision": facts["precision"],
        "device": facts["device"],
        "workers_failed": failed_workers,
        "cluster": {
            "scheduler": info.get("address"),
            "workers": len(info["workers"]),
            "dashboard": getattr(client, "dashboard_link", None),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "threads_per_worker": nthreads,
        },
        "counts": dataclasses.asdict(total),
        "partitions": {"total": len(plan), "computed": len(todo), "reused": len(plan) - len(todo)},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "reads_per_s": total.reads / timings["total"] if timings["total"] else None,
        "workers": workers,
        "embedding": stages,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
