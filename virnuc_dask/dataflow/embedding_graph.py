"""Embedding the partitions that are not done yet, as they become ready: one delayed
embedding task and one store task per partition, about two partitions per worker in
flight, and a stop when no worker is left that can embed or when whole partitions keep
failing (the fault is not in the records)."""

from __future__ import annotations

import logging
from typing import Any

import dask
from distributed import Client

from virnuc_dask.config import Settings
from virnuc_dask.dataflow.block_tasks import load_partition
from virnuc_dask.dataflow.dashboard import (
    EMBED_STAGE,
    STORE_STAGE,
    task_key,
    unique_key,
)
from virnuc_dask.dataflow.models_on_workers import load_failures, model_status
from virnuc_dask.dataflow.partition_task import (
    SYSTEMIC_FAILURES,
    PartitionJob,
    embed_partition,
    store_partition,
)
from virnuc_dask.dataflow.store import EmbeddingStore
from virnuc_dask.errors import ModelLoadError, SystemicFailure
from virnuc_dask.models.registry import EMBEDDING_MODELS
from virnuc_dask.partition_result import PartitionResult
from virnuc_dask.worker.plugin import EMBED_RESOURCE

logger = logging.getLogger(__name__)

# Tasks that use the models ask for the resource a worker offers once its models are
# loaded: one at a time per worker, never on a worker whose load failed.
MODEL_RESOURCES = {EMBED_RESOURCE: 1}


# How long the embedding loop waits for a partition before it checks that some worker
# can still embed.
HEALTH_CHECK_S = 30.0


def check_embedding_workers(client: Client, *, run: str | None = None) -> None:
    """Raise when no connected worker has (or is loading) the models; the failures named
    are those of ``run`` (the models' registration token) where given."""
    statuses = model_status(client)
    if any(s["state"] in ("new", "loading", "ready") for s in statuses.values()):
        return
    reasons = "; ".join(f["error"] for f in load_failures(client, run=run))
    raise ModelLoadError(
        "no worker is left that can embed"
        + (f": {reasons}" if reasons else " (every worker has gone)")
    )


#: Scheduler priorities: a partition's tasks before dedup, dedup before result files,
#: result files before reading more blocks (the device waits on none of those).
PARTITION_PRIORITY = 30
DEDUP_PRIORITY = 20
WRITE_PRIORITY = 10


class EmbeddingQueue:
    """Partitions to embed and store, added as they become ready; their results as they
    finish.

    One delayed embedding task and one store task per partition. About two partitions
    per worker are in flight, and the next is submitted when one finishes: the scheduler
    assigns a task that asks for a resource when it is submitted, so submitting
    everything at once would deal the partitions out in advance, evenly, whatever each
    device's speed. This way the worker that finishes first gets the next partition,
    and a faster GPU takes a larger share. :meth:`finished` stops the run when whole
    partitions keep failing (the fault is not in the records).

    Usage (``client`` a :class:`distributed.Client`)::

        queue = EmbeddingQueue(client, settings, store, root, buckets)
        queue.add(0, 0, [(0, 0, 2048)], waves=[0])
        queue.top_up()
        for future in distributed.as_completed(list(queue.pending)):
            entry = queue.finished(future)
    """

    def __init__(
        self,
        client: Client,
        settings: Settings,
        store: EmbeddingStore,
        root: str,
        buckets: int,
        *,
        run_scores: str | None = None,
    ) -> None:
        """``run_scores``: a sequencing run's score table (:mod:`.run_scores`)."""
        self.client, self.settings, self.store = client, settings, store
        self.run_scores = run_scores
        self.root, self.buckets = root, buckets
        self.keep = store.embeddings
        self.waiting: list[tuple[int, Any]] = []
        self.pending: dict[Any, int] = {}  # future -> partition
        self.futures: list = []  # every future submitted, for cancelling
        self.stats: list[PartitionResult] = []
        self.added = 0
        self.streak = 0  # failed records of partitions in which every record failed, in a row

    def add(self, partition: int, row_start: int, pieces: list, waves: list[int]) -> None:
        """Queue one partition: rows from ``row_start``, ``pieces`` ``(block, lo, hi)``,
        its dedup decided in ``waves``."""
        rows = sum(hi - lo for _, lo, hi in pieces)
        part = dask.delayed(load_partition, pure=True)(
            self.root,
            pieces,
            row_start,
            rows,
            self.buckets,
            waves,
            dask_key_name=unique_key("partition"),
        )  # the scratch is this run's
        job = PartitionJob(
            partition=partition,
            row_start=row_start,
            out=str(self.store.out),
            ceilings=tuple((m.key, m.ceiling(self.settings)) for m in EMBEDDING_MODELS),
            keep=self.keep,
            run_scores=self.run_scores,
        )
        # Embedding tasks hold the device (one GPU=1 per worker with its models loaded);
        # reading, slicing and writing run beside them in the workers' other threads.
        with dask.annotate(resources=MODEL_RESOURCES):
            embedded = dask.delayed(embed_partition, pure=True)(
                part, job, dask_key_name=task_key(EMBED_STAGE, part, job)
            )
        stored = dask.delayed(store_partition, pure=True)(
            embedded, dask_key_name=task_key(STORE_STAGE, embedded)
        )
        self.waiting.append((partition, stored))
        self.added += 1

    def top_up(self) -> None:
        """Submit waiting partitions up to about two per worker in flight."""
        window = max(2, 2 * len(self.client.scheduler_info(n_workers=-1)["workers"]))
        while self.waiting and len(self.pending) < window:
            partition, work = self.waiting.pop(0)
            # Unoptimised: fusing would merge the embedding and store tasks (and lose
            # the annotation that keeps only one embedding task per device).
            future = self.client.compute(
                work, retries=1, optimize_graph=False, priority=PARTITION_PRIORITY
            )
            self.futures.append(future)
            self.pending[future] = partition

    def finished(self, future: Any) -> PartitionResult:
        """The result of a finished partition's future (raises what the task raised)."""
        self.pending.pop(future, None)
        entry: PartitionResult = future.result()
        self.stats.append(entry)
        self.streak = self.streak + entry.rows if entry.all_failed else 0
        if self.streak >= SYSTEMIC_FAILURES:
            last = entry.failed[-1]
            raise SystemicFailure(
                f"embedding stopped: {self.streak} records in a row failed, the last "
                f"{last.id}: {last.error}; the "
                "fault is not in the input records: check the model files, the "
                "device and its driver"
            )
        return entry

    def busy(self) -> bool:
        return bool(self.pending or self.waiting)

    def cancel(self) -> None:
        self.client.cancel(self.futures)
