"""What a run shows on Dask's dashboard: stage names, throughput metrics, the report.

- **Task names.** Keys are ``<stage>-<token>``, so the task stream, progress bars and
  fine performance metrics group work by stage: ``read_orfs`` (read a FASTA or FASTQ
  block, chunk, translate, write its ORFs into the scratch), ``dedup`` (one hash
  bucket of one model), ``partition`` (an embedding partition's rows read back),
  ``embed``, ``classify``, ``write-results``.
- **Throughput.** :func:`record_embedding`, called by an embedding task, logs ORFs,
  tokens and seconds per model with ``distributed.metrics.context_meter``: they
  appear on the dashboard's *Fine Performance Metrics* page (units ``orfs``,
  ``tokens``, ``seconds``) and in every worker's ``digests_total``.
  :class:`ThroughputMetrics` publishes each worker's running totals and ORFs per
  second as custom worker metrics: columns of the dashboard's *Workers* table and
  ``client.scheduler_info()["workers"][address]["metrics"]``.
- **Report.** :func:`performance_report` wraps ``distributed.performance_report``.

Usage::

    client.register_plugin(ThroughputMetrics())
    with performance_report("run.html"):
        predict(settings, client)

"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dask.base import tokenize
from distributed import Client, WorkerPlugin
from distributed.metrics import context_meter

from virnuc_dask.models import MODEL_KEYS

logger = logging.getLogger(__name__)

EMBED_STAGE = "embed"
STORE_STAGE = "store-embeddings"
# Unit and label of each throughput figure logged by an embedding task.
ORFS = ("embedded", "orfs")


def task_key(stage: str, *parts: Any) -> str:
    """A deterministic key ``<stage>-<token of parts>``: same inputs, same task."""
    return f"{stage}-{tokenize(*parts)}"


def unique_key(stage: str) -> str:
    """A fresh key ``<stage>-<uuid>`` for a task that must always run."""
    return f"{stage}-{uuid.uuid4().hex}"


def record_embedding(orfs: int, per_model: dict[str, tuple[int, float]]) -> None:
    """Log, from inside a task, the ORFs embedded and ``{model: (tokens, seconds)}``.

    Seconds logged here are taken out of the task's generic thread time, so the
    Fine Performance Metrics page splits an embedding task's time by model.
    """
    context_meter.digest_metric(ORFS[0], orfs, ORFS[1])
    for model, (tokens, seconds) in per_model.items():
        context_meter.digest_metric(model, tokens, "tokens")
        context_meter.digest_metric(model, seconds, "seconds")


def _totals(worker: Any) -> dict[str, float]:
    orfs = tokens = seconds = 0.0
    for key, value in list(worker.digests_total.items()):
        if not (isinstance(key, tuple) and len(key) >= 3 and key[0] == "execute"):
            continue
        label, unit = key[-2], key[-1]
        if (label, unit) == ORFS:
            orfs += value
        elif label in MODEL_KEYS and unit == "tokens":
            tokens += value
        elif label in MODEL_KEYS and unit == "seconds":
            seconds += value
    return {"embedded_orfs": orfs, "embedded_tokens": tokens, "embed_seconds": seconds}


class ThroughputMetrics(WorkerPlugin):
    """Publishes each worker's embedding totals as custom worker metrics.

    ``embedded_orfs``, ``embedded_tokens``, ``embed_seconds`` (model time) and
    ``embed_orfs_per_s`` travel with every heartbeat; the dashboard's Workers table
    shows them as columns.

    Usage::

        client.register_plugin(ThroughputMetrics())
        client.scheduler_info()["workers"][address]["metrics"]["embedded_orfs"]
        2048.0

    """

    name = "virnuc-dask-throughput"
    METRICS = ("embedded_orfs", "embedded_tokens", "embed_seconds", "embed_orfs_per_s")

    def setup(self, worker: Any) -> None:
        for metric in self.METRICS:
            worker.metrics[metric] = _metric(metric)

    def teardown(self, worker: Any) -> None:
        for metric in self.METRICS:
            worker.metrics.pop(metric, None)


def _metric(name: str):
    def read(worker: Any) -> float:
        totals = _totals(worker)
        if name == "embed_orfs_per_s":
            seconds = totals["embed_seconds"]
            return totals["embedded_orfs"] / seconds if seconds else 0.0
        return totals[name]

    read.__name__ = name
    return read


NO_GPU = "no GPU"


def gpu_metrics(
    worker_info: dict[str, Any],
    memory: dict[str, int] | None = None,
    claimed: dict[str, Any] | None = None,
) -> dict[str, Any] | str:
    """A worker's GPU figures, or ``"no GPU"``.

    ``claimed``: the model plugin's NVML figures of the GPU the worker claimed, found by
    its UUID (:class:`~virnuc_dask.worker.gpu_figures.GpuSampler`); its utilisation is
    the mean over the samples taken while the worker embedded. Without them (a live
    view, no ``pynvml`` on the worker), ``worker_info`` -- the worker's entry of
    ``client.scheduler_info()["workers"]`` -- gives distributed's heartbeat sample
    (``metrics["gpu"]``: utilisation in percent now and the device's memory in use; name
    and total at start), which is of the first device the worker sees. ``memory`` adds
    what the worker's own process holds (``reserved``) and held at most (``peak``),
    from torch's allocator.
    """
    metrics = worker_info.get("metrics", {}) or {}
    sample = metrics.get("gpu")
    if not isinstance(sample, dict) and not memory and not claimed:
        return NO_GPU
    out: dict[str, Any] = {}
    if claimed:
        out.update(
            {
                key: claimed.get(key)
                for key in (
                    "name",
                    "uuid",
                    "utilization",
                    "utilization_samples",
                    "memory_used",
                    "memory_total",
                )
            }
        )
    else:
        if isinstance(sample, dict):
            out["utilization"] = sample.get("utilization")
            out["memory_used"] = sample.get("memory-used")
        static = worker_info.get("gpu") or {}
        if isinstance(static, dict):
            out["name"] = static.get("name")
            out["memory_total"] = static.get("memory-total")
    if memory:
        out["process_memory"] = memory.get("reserved")
        out["process_memory_peak"] = memory.get("peak")
    return out


def worker_throughput(client: Client) -> dict[str, dict[str, float]]:
    """Each worker's totals, read from the workers themselves (not the last heartbeat)."""

    def collect(dask_worker: Any) -> dict[str, float]:
        totals = _totals(dask_worker)
        seconds = totals["embed_seconds"]
        totals["embed_orfs_per_s"] = totals["embedded_orfs"] / seconds if seconds else 0.0
        return totals

    return client.run(collect)


def dashboard_link(client: Client) -> str | None:
    """The scheduler's dashboard address, or None when it runs without one."""
    try:
        return client.dashboard_link
    except KeyError:
        return None


@contextlib.contextmanager
def performance_report(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Save Dask's performance report of everything computed inside to ``path`` (HTML).

    ``None``: no report. Uses the current default client.
    """
    if path is None:
        yield
        return
    from distributed import performance_report as dask_report

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with dask_report(filename=str(target)):
        yield
    logger.info("performance report: %s", target)
