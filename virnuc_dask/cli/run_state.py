"""The state behind the progress display: the pipeline's progress events folded into
per-stage and per-worker figures (what is done, rates, ETA), read by the renderers of
:mod:`virnuc_dask.cli.progress`."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from virnuc_dask.events import ProgressEvent
from virnuc_dask.models import EMBEDDING_MODELS, MODEL_KEYS, MODEL_NAMES

logger = logging.getLogger(__name__)

#: Rows of the display, in pipeline order: key -> label.
STAGES = {
    "models": "loading models",
    "read": "reading + translating",
    **{m.key: f"embedding {m.name}" for m in EMBEDDING_MODELS},
    "classify": "classifying",
    "write": "writing results",
}
MODELS = MODEL_NAMES
#: The embedding row that stands for the embedding as a whole: the last model's (all run
#: in one task per partition, so their rows advance together).
LAST_MODEL = MODEL_KEYS[-1]


@dataclasses.dataclass
class StageState:
    """Progress of one stage; times are ``time.monotonic()`` values."""

    key: str
    done: int = 0
    total: int | None = None
    started: float | None = None
    finished: float | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return STAGES[self.key]

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.finished or now) - self.started


@dataclasses.dataclass
class WorkerState:
    """What one worker's finished embedding partitions measured."""

    address: str
    partitions: int = 0
    orfs: int = 0
    seconds: float = 0.0
    tokens: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(MODELS, 0))
    model_seconds: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(MODELS, 0.0)
    )

    @property
    def orfs_per_s(self) -> float | None:
        return self.orfs / self.seconds if self.seconds else None


class RunProgress:
    """The state behind the display: fed by the pipeline's events, read by the renderers.

    >>> from virnuc_dask.partition_result import ModelStats, PartitionResult
    >>> state = RunProgress(clock=lambda: 10.0)
    >>> state.record(ProgressEvent("embed", 0, 2, orfs_total=100, orfs_reused=0))
    >>> stats = {key: ModelStats(sequences=50, rows=50, real_tokens=400, seconds=1.0)
    ...          for key in MODEL_KEYS}
    >>> state.record(ProgressEvent("embed", 1, 2, partitions=(PartitionResult(
    ...     partition=0, row_start=0, rows=50, worker="w1", models=stats),)))
    >>> state.stage(LAST_MODEL).done, state.stage(LAST_MODEL).total, state.workers["w1"].orfs
    (50, 100, 50)
    """

    def __init__(self, *, clock=time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.stages = {key: StageState(key) for key in STAGES}
        self.workers: dict[str, WorkerState] = {}
        self.embed_started: float | None = None
        self.orfs_reused = 0
        self.orfs_failed = 0
        self.gpu_peak: dict[str, float] = {}  # highest device memory in use seen per worker
        self.lock = threading.Lock()

    def stage(self, key: str) -> StageState:
        return self.stages[key]

    def record(self, event: ProgressEvent) -> None:
        """Take one event from the pipeline."""
        stage, done, total = event.stage, event.done, event.total
        with self.lock:
            now = self.clock()
            if stage == "embed":
                self._record_embed(now, event)
                return
            if stage not in self.stages:
                logger.debug("progress event for unknown stage %r ignored", stage)
                return
            state = self.stages[stage]
            self._advance(state, now, done, total)
            state.counts.update(event.counts())

    @staticmethod
    def _advance(state: StageState, now: float, done: int, total: int | None) -> None:
        if state.started is None:
            state.started = now
        state.done, state.total = done, total
        if total is not None and done >= total and state.finished is None:
            state.finished = now

    def _record_embed(self, now: float, event: ProgressEvent) -> None:
        done, total = event.done, event.total
        if event.orfs_total is not None and self.embed_started is not None:
            # The run reads on while it embeds: more rows and partitions are known.
            for key in MODELS:
                state = self.stages[key]
                state.total = event.orfs_total
                state.counts["partitions_total"] = total
        elif event.orfs_total is not None:
            self.embed_started = now
            self.orfs_reused = event.orfs_reused or 0
            for key in MODELS:
                state = self.stages[key]
                state.counts = {
                    "partitions": 0,
                    "partitions_total": total,
                    "tokens": 0,
                    "padded_tokens": 0,
                    "ms": 0,
                }
                state.total = event.orfs_total
                state.done = self.orfs_reused
                state.started = now
                state.finished = now if state.done >= state.total else None
        for entry in event.partitions:
            worker = self.workers.setdefault(entry.worker, WorkerState(entry.worker))
            worker.partitions += 1
            # ORFs handled: every row of the partition (copies of an input take its
            # first copy's embedding and are counted without being embedded again).
            worker.orfs += entry.rows
            self.orfs_failed += len(entry.failed)
            for key in MODELS:
                stats = entry.models[key]
                state = self.stages[key]
                if state.started is None:  # no opening event: count from here
                    state.started = now
                state.done += stats.rows
                counts = state.counts
                counts["partitions"] = counts.get("partitions", 0) + 1
                counts["tokens"] = counts.get("tokens", 0) + stats.real_tokens
                counts["padded_tokens"] = counts.get("padded_tokens", 0) + stats.padded_tokens
                counts["ms"] = counts.get("ms", 0) + int(1000 * stats.seconds)
                worker.tokens[key] += stats.real_tokens
                worker.model_seconds[key] += stats.seconds
                worker.seconds += stats.seconds
        if done >= total:
            for key in MODELS:
                state = self.stages[key]
                if state.started is None:
                    state.started = now
                if state.finished is None:
                    state.finished = now
                    if state.total is None:
                        state.total = state.done

    def record_gpus(self, gpus: Mapping[str, Any]) -> None:
        """Note each worker's device memory in use (for the peak shown beside it); the
        caller holds ``lock``."""
        for address, figures in gpus.items():
            if isinstance(figures, Mapping):
                used = figures.get("memory_used") or figures.get("process_memory")
                if used:
                    self.gpu_peak[address] = max(self.gpu_peak.get(address, 0), used)

    # -- derived figures -----------------------------------------------------------------

    def embed_rate(self, now: float) -> float | None:
        """ORFs per second embedded in this run (reused partitions not counted)."""
        state = self.stages[LAST_MODEL]
        if self.embed_started is None or state.started is None:
            return None
        computed = state.done - self.orfs_reused
        elapsed = (state.finished or now) - self.embed_started
        return computed / elapsed if computed > 0 and elapsed > 0 else None

    def eta(self, key: str, now: float) -> float | None:
        """Seconds left in a stage at the current rate (embedding rows only)."""
        state = self.stages[key]
        if key not in MODELS or state.finished is not None or state.total is None:
            return None
        rate = self.embed_rate(now)
        return (state.total - state.done) / rate if rate else None

    def model_share(self, key: str) -> float | None:
        ms = {k: self.stages[k].counts.get("ms", 0) for k in MODELS}
        total = sum(ms.values())
        return ms[key] / total if total else None

    def tokens_per_s(self, key: str) -> float | None:
        """Tokens per second of busy worker time for one model (mean over workers)."""
        counts = self.stages[key].counts
        seconds = counts.get("ms", 0) / 1000
        return counts.get("tokens", 0) / seconds if seconds else None
