"""Embedding the partitions that are not done yet: one delayed embedding task and one
store task per partition, about two partitions per worker in flight, progress per
finished partition, and a stop when no worker is left that can embed or when whole
partitions keep failing (the fault is not in the records)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import dask
from distributed import Client, wait

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


def check_embedding_workers(client: Client) -> None:
    """Raise when no connected worker has (or is loading) the models."""
    statuses = model_status(client)
    if any(s["state"] in ("new", "loading", "ready") for s in statuses.values()):
        return
    reasons = "; ".join(f["error"] for f in load_failures(client))
    raise ModelLoadError(
        "no worker is left that can embed"
        + (f": {reasons}" if reasons else " (every worker has gone)")
    )


def embed_partitions(
    client: Client,
    settings: Settings,
    store: EmbeddingStore,
    root: str,
    buckets: int,
    plan: list[tuple[int, list[tuple[int, int, int]]]],
    todo: list[int],
    tick: Callable[..., None],
    *,
    run_scores: str | None = None,
) -> list[PartitionResult]:
    """Embed and store the partitions ``todo`` of ``plan``; their results, as they finish.
    ``run_scores``: a sequencing run's score table (:mod:`.run_scores`)."""
    if not todo:
        return []
    # Embedding tasks hold the device (one GPU=1 per worker with its models loaded);
    # reading, slicing and writing run beside them in the workers' other threads.
    resources = MODEL_RESOURCES
    stored = []
    for p in todo:
        row_start, pieces = plan[p]
        rows = sum(hi - lo for _, lo, hi in pieces)
        part = dask.delayed(load_partition, pure=True)(
            root, pieces, row_start, rows, buckets, dask_key_name=unique_key("partition")
        )  # the scratch is this run's
        job = PartitionJob(
            partition=p,
            row_start=row_start,
            out=str(store.out),
            ceilings=tuple((m.key, m.ceiling(settings)) for m in EMBEDDING_MODELS),
            keep=store.embeddings,
            run_scores=run_scores,
        )
        with dask.annotate(resources=resources):
            embedded = dask.delayed(embed_partition, pure=True)(
                part, job, dask_key_name=task_key(EMBED_STAGE, part, job)
            )
        stored.append(
            dask.delayed(store_partition, pure=True)(
                embedded, dask_key_name=task_key(STORE_STAGE, embedded)
            )
        )
    # Unoptimised: fusing would merge the embedding and store tasks (and lose the
    # annotation that keeps only one embedding task per device).
    futures: list = []
    stats: list[PartitionResult] = []
    scoring = settings.classifier is not None  # the embedding task classifies too
    scored = 0
    if scoring:
        tick("classify", 0, len(stored))
    streak = 0  # failed records of partitions in which every record failed, in a row
    try:
        for n, fut in enumerate(_completed(client, stored, futures), 1):
            entry: PartitionResult = fut.result()
            stats.append(entry)
            streak = streak + entry.rows if entry.all_failed else 0
            if streak >= SYSTEMIC_FAILURES:
                last = entry.failed[-1]
                raise SystemicFailure(
                    f"embedding stopped: {streak} records in a row failed, the last "
                    f"{last.id}: {last.error}; the "
                    "fault is not in the input records: check the model files, the "
                    "device and its driver"
                )
            tick("embed", n, len(stored), partitions=(entry,))
            if scoring:
                scored += entry.rows - len(entry.failed)
                tick("classify", n, len(stored), orfs=scored)
    except BaseException:
        client.cancel(futures)
        raise
    return stats


def _completed(client: Client, work: list, futures: list):
    """Compute the ``work`` (delayed objects) a few at a time; yield each future as it
    finishes (all of them are appended to ``futures``, for cancelling).

    About two partitions per worker are in flight, and the next is submitted when one
    finishes: the scheduler assigns a task that asks for a resource when it is
    submitted, so submitting everything at once would deal the partitions out in
    advance, evenly, whatever each device's speed. This way the worker that finishes
    first gets the next partition, and a faster GPU takes a larger share. Every
    ``HEALTH_CHECK_S`` without a finished partition, checks that a worker able to
    embed is left (else the tasks would wait for ever).
    """
    todo = list(work)
    pending: list = []

    def top_up() -> None:
        window = max(2, 2 * len(client.scheduler_info(n_workers=-1)["workers"]))
        while todo and len(pending) < window:
            future = client.compute(todo.pop(0), retries=1, optimize_graph=False)
            futures.append(future)
            pending.append(future)

    top_up()
    while pending:
        try:
            done, rest = wait(pending, timeout=HEALTH_CHECK_S, return_when="FIRST_COMPLETED")
        except TimeoutError:
            check_embedding_workers(client)
            continue
        pending[:] = list(rest)
        top_up()
        yield from done
