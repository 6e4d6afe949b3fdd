"""One embedding partition on a worker: every embedding model, the classifier, failing
records isolated, rows stored.

Each model embeds the whole partition in one call (token-budget batches; a batch
that runs out of device memory is halved inside the batch runner,
:mod:`virnuc_dask.worker.batch_runner`). When a call raises for any other reason, the
records are bisected: each half is embedded on its own, recursively, until the records
that fail alone are found. Those are reported as failed (their rows stay zero and they
get no score); every other record is embedded normally. A record that does not fit in
device memory even alone (``SequenceTooLarge``) is failed directly. The models run in
the registry's order (:mod:`virnuc_dask.models.registry`); a record that fails in one is
not given to the next. A row that takes its vector from a row that failed (dedup)
fails with it.

The classifier scores the rows on the same worker, from the vectors in memory
(:mod:`virnuc_dask.dataflow.copies` says which rows take another row's vectors or
scores); the embeddings are stored only when the run keeps them.

A device fault (a sticky CUDA error, :mod:`virnuc_dask.worker.faults`) is not a
record's: it takes the worker out of the run and the partition goes to another
worker (:meth:`~virnuc_dask.worker.plugin.ModelPlugin.holding_device`). Another fault
that is not in the records (unusable weights, a broken driver) makes every record
fail. Rather than trying each record of the partition alone, the task stops with
``SystemicFailure`` once
``SYSTEMIC_FAILURES`` records in a row have failed with no success between them.
A partition none of whose records could be embedded is written but not recorded
as finished: the next run tries it again.

The rows are written by a task of their own (:func:`store_partition`), which a
worker's second thread runs while the device embeds the next partition.

>>> guard = FailureGuard(limit=2)
>>> guard.failed("r1_chunk_1F1", MODEL_KEYS[-1], ValueError("bad"))
>>> guard.succeeded()
>>> guard.streak
0
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from distributed import get_worker

from virnuc_dask.dataflow.copies import plan_rows
from virnuc_dask.dataflow.dashboard import record_embedding
from virnuc_dask.dataflow.run_scores import RunScores, take_scores
from virnuc_dask.dataflow.store import SCORES, EmbeddingStore
from virnuc_dask.errors import SystemicFailure
from virnuc_dask.models.classifier import score
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS
from virnuc_dask.partition_result import FailedRecord, ModelStats, PartitionResult
from virnuc_dask.worker.batch_runner import NonFiniteEmbedding, SequenceTooLarge, embed
from virnuc_dask.worker.faults import is_device_fault
from virnuc_dask.worker.plugin import worker_models

logger = logging.getLogger(__name__)

SYSTEMIC_FAILURES = 8

Embed = Callable[[np.ndarray], tuple[np.ndarray, Any]]


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, for one line of ``failed_records.tsv``."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class FailureGuard:
    """Counts records that failed in a row; raises :class:`SystemicFailure` at ``limit``."""

    def __init__(self, *, limit: int = SYSTEMIC_FAILURES) -> None:
        self.limit = limit
        self.streak = 0

    def succeeded(self) -> None:
        self.streak = 0

    def failed(self, record: str, stage: str, exc: BaseException) -> None:
        self.streak += 1
        if self.streak >= self.limit:
            raise SystemicFailure(
                f"{stage}: {self.streak} records in a row failed to embed (last {record}: "
                f"{describe(exc)}); the fault is not in the input records: check the model "
                "files, the device and its driver"
            )


@dataclasses.dataclass(frozen=True)
class RecordFailure:
    """A record of the partition (by position) that could not be embedded."""

    index: int
    stage: str
    error: str


def isolate_failures(
    embed: Embed,
    indices: np.ndarray,
    *,
    stage: str,
    ids: Sequence[str],
    guard: FailureGuard,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[Any], list[RecordFailure]]:
    """``embed(indices)``, bisecting on failure: (indices, values) pieces, stats, failures."""
    pieces, stats, failures = [], [], []
    pending = [indices] if len(indices) else []
    while pending:
        idx = pending.pop()
        try:
            values, stat = embed(idx)
        except SystemicFailure:
            raise
        except (SequenceTooLarge, NonFiniteEmbedding) as exc:
            # Records that fail alone; the call's finished rows are kept.
            kept = exc.done if exc.done is not None else np.zeros(len(idx), dtype=bool)
            for pos in exc.indices:
                failures.append(RecordFailure(int(idx[pos]), stage, describe(exc)))
                logger.warning("%s: %s failed: %s", stage, ids[int(idx[pos])], describe(exc))
                if not kept.any():
                    guard.failed(ids[int(idx[pos])], stage, exc)
            if kept.any():
                guard.succeeded()
                pieces.append((idx[kept], exc.values[kept]))
                stats.append(exc.stats)
            rest = np.ones(len(idx), dtype=bool)
            rest[kept] = False
            rest[exc.indices] = False
            if rest.any():
                pending.append(idx[rest])
            continue
        except Exception as exc:  # noqa: BLE001 - whatever a forward raises is recorded per record
            if is_device_fault(exc):
                raise  # the device failed, not these records: the worker leaves
            if len(idx) == 1:
                failures.append(RecordFailure(int(idx[0]), stage, describe(exc)))
                logger.warning("%s: %s failed: %s", stage, ids[int(idx[0])], describe(exc))
                guard.failed(ids[int(idx[0])], stage, exc)
                continue
            logger.info(
                "%s: %d records failed together (%s); retrying in halves",
                stage,
                len(idx),
                describe(exc),
            )
            half = len(idx) // 2
            pending.extend([idx[half:], idx[:half]])
            continue
        guard.succeeded()
        pieces.append((idx, values))
        stats.append(stat)
    return pieces, stats, failures


@dataclasses.dataclass(frozen=True)
class PartitionRows:
    """The ORFs of one partition, as columns.

    ``sources`` (with dedup): per model, the global row whose embedding each row takes;
    a row is embedded here only where that is the row itself (``row_start + i``).
    """

    ids: list[str]
    nucleotides: list[str]
    proteins: list[str]
    sources: dict[str, np.ndarray] | None = None

    @classmethod
    def of(cls, orfs: Sequence[Any]) -> PartitionRows:
        """From :class:`~virnuc_dask.core.translate.Orf` objects (every row embedded)."""
        return cls([o.id for o in orfs], [o.nucleotide for o in orfs], [o.protein for o in orfs])

    def __len__(self) -> int:
        return len(self.ids)

    def texts(self, embeds: str) -> list[str]:
        """What a model that embeds ``embeds`` (``nucleotide`` or ``protein``) reads."""
        return {"nucleotide": self.nucleotides, "protein": self.proteins}[embeds]


@dataclasses.dataclass(frozen=True)
class PartitionJob:
    """What one embedding task is asked for; its rows come as the other argument.

    ``ceilings``: per embedding model (its key), the token-budget ceiling the settings
    give (missing or None: from the device's free memory). ``keep``: the dtype in which
    the embeddings are stored (None: they are not). ``run_scores``: the score table
    of the sequencing run (:mod:`.run_scores`) rows scored elsewhere take.
    """

    partition: int
    row_start: int
    out: str
    ceilings: tuple[tuple[str, int | None], ...] = ()
    keep: str | None = None
    run_scores: str | None = None  # a sequencing run's shared score table (.run_scores)

    def ceiling(self, model: str) -> int | None:
        return dict(self.ceilings).get(model)


@dataclasses.dataclass(frozen=True)
class EmbeddedPartition:
    """A partition's rows on their way to :func:`store_partition`: ``arrays`` by store
    array (``scores``, the kept embeddings; rows that take another row's values stay
    zero), ``sources`` by store array (the ``<name>_source`` rows)."""

    job: PartitionJob
    result: PartitionResult
    ids: list[str]
    arrays: dict[str, np.ndarray]
    sources: dict[str, np.ndarray] | None


def embed_partition(rows: PartitionRows | Sequence[Any], job: PartitionJob) -> EmbeddedPartition:
    """Embed one partition's ORFs with every embedding model and score them (the task
    holding the device).

    ``rows``: a :class:`PartitionRows` (or a list of ORFs). Writing is left to
    :func:`store_partition`, a separate task, so that the device is free for the next
    partition while these rows go to disk (a worker's other thread runs it).
    """
    if not isinstance(rows, PartitionRows):
        rows = PartitionRows.of(rows)
    models = worker_models()
    dims = models.dims
    # Held here, so that a plugin torn down meanwhile (worker closing) cannot pull the
    # models from under this task and make every record look failed.
    adapters = dict(models.adapters)
    classifier = models.classifier
    device = models.device
    ids = rows.ids
    texts = {m.key: rows.texts(m.embeds) for m in EMBEDDING_MODELS}
    row_start = job.row_start
    plan = plan_rows(row_start, len(rows), rows.sources, scoring=classifier is not None)
    taken = None
    if job.run_scores and classifier is not None and job.keep is None:
        plan, taken = take_scores(job.run_scores, texts, plan, classifier.output_layer.out_features)

    def embedder(stage: str) -> Embed:
        def run(idx: np.ndarray) -> tuple[np.ndarray, Any]:
            return embed(
                adapters[stage],
                [texts[stage][i] for i in idx],
                toks_per_batch=job.ceiling(stage),
                device=device,
                budget=models.budget(stage),
            )

        return run

    guard = FailureGuard()
    failed: dict[int, RecordFailure] = {}
    vectors: dict[str, np.ndarray] = {}
    stats: dict[str, ModelStats] = {}
    # One embedding task per device, even where the scheduler would run two (a worker
    # started with more than one GPU resource).
    with models.holding_device(f"partition {job.partition}"):
        for stage in MODEL_KEYS:  # in the registry's order
            todo = plan.embed[stage].copy()
            todo[list(failed)] = False  # failed in an earlier model: not given to this one
            todo = np.flatnonzero(todo).astype(np.int64)
            pieces, counters, new = isolate_failures(
                embedder(stage), todo, stage=stage, ids=ids, guard=guard
            )
            failed.update((f.index, f) for f in new)
            # A row that takes an earlier row's vector fails with it.
            take = plan.take[stage]
            for i in np.flatnonzero(take != np.arange(len(rows))).tolist():
                if int(take[i]) in failed and i not in failed:
                    failed[i] = dataclasses.replace(failed[int(take[i])], index=i)
            values = np.zeros((len(rows), dims[stage]), dtype=np.float32)
            for idx, piece in pieces:
                values[idx] = piece
            vectors[stage] = values
            budget = models.budget(stage)  # as learned so far on this worker
            stats[stage] = ModelStats.total(
                (c.as_dict() for c in counters),
                rows=len(rows),
                unique=len(todo),
                budget_tokens=budget.current if budget.ceiling else None,
            )
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, np.ndarray] = {}
    t = time.perf_counter()
    if taken is not None:  # their scores are known, whatever their embedding did
        failed = {i: f for i, f in failed.items() if not taken.rows[i]}
    if classifier is not None:
        scored = ~plan.copies
        scored[list(failed)] = False
        if taken is not None:
            scored &= ~taken.rows
        features = np.concatenate([vectors[m][plan.take[m][scored]] for m in MODEL_KEYS], axis=1)
        scores = np.zeros((len(rows), classifier.output_layer.out_features), dtype=np.float32)
        scores[scored] = score(classifier, features)
        if taken is not None:
            scores[taken.rows] = taken.scores[taken.rows]
            # Shared at once: the device's next partition (of any sample) finds them.
            RunScores(job.run_scores).publish(taken.keys[scored], scores[scored])
        arrays[SCORES] = scores
        sources[SCORES] = plan.scores_source
    if job.keep is not None:
        for m in MODEL_KEYS:
            # Only first copies hold their vector; the others read it through the source.
            vectors[m][~plan.own[m]] = 0.0
            arrays[m] = vectors[m].astype(job.keep, copy=False)
            if rows.sources is not None:
                sources[m] = rows.sources[m]
    record = tuple(
        FailedRecord(row_start + i, ids[i], f.stage, f.error) for i, f in sorted(failed.items())
    )
    record_embedding(
        len(rows) - len(record),
        {m: (stats[m].real_tokens, stats[m].seconds) for m in MODEL_KEYS},
    )
    result = PartitionResult(
        partition=job.partition,
        row_start=row_start,
        rows=len(rows),
        worker=get_worker().address,
        models=stats,
        failed=record,
        classify_seconds=time.perf_counter() - t,
        from_run=0 if taken is None else taken.count,
    )
    return EmbeddedPartition(job, result, ids, arrays, sources)


def store_partition(embedded: EmbeddedPartition) -> PartitionResult:
    """Write the rows of :func:`embed_partition` to the store, flushed, then record the
    partition as done; the result with ``store_seconds``."""
    t = time.perf_counter()
    result = embedded.result
    # A partition of which nothing could be embedded is not recorded as done: whatever
    # made every record fail (a fault that comes and goes) gets another chance next run.
    EmbeddingStore(embedded.job.out).write_partition(
        result,
        embedded.ids,
        embedded.arrays,
        done=not result.all_failed,
        sources=embedded.sources,
    )
    return dataclasses.replace(result, store_seconds=time.perf_counter() - t)
