"""One streaming graph from the input files to the stored scores: blocks read in waves
(:mod:`~virnuc_dask.dataflow.reading`), each partition embedded as soon as its rows are
decided (:mod:`~virnuc_dask.dataflow.embedding_graph`), each block's result part files
written as soon as its partitions are finished (:mod:`~virnuc_dask.dataflow.result_parts`).
No stage waits for another to end: the client takes whatever task finishes next and
submits what it makes possible.

The store is opened when the first partition is ready: the run's fingerprint needs the
models (loaded meanwhile). A store of another run is refused only once every block is
read and checked, so that a bad input is reported first, as by a run that reads
everything before it embeds; a store this run created is removed when the run stops on
a bad input (the fixed input is another run).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from typing import Any

from distributed import Client, wait

from virnuc_dask.config import Settings
from virnuc_dask.core.formats import check_input, plan_blocks
from virnuc_dask.core.orfs import Selection
from virnuc_dask.core.pairs import PairRows, mate_layout, with_mates
from virnuc_dask.core.plan import partition_pieces
from virnuc_dask.core.translate import six_frame_orfs
from virnuc_dask.dataflow.embedding_graph import (
    HEALTH_CHECK_S,
    EmbeddingQueue,
    check_embedding_workers,
)
from virnuc_dask.dataflow.identity import OpenedStore, fingerprint, open_store
from virnuc_dask.dataflow.integrity import damaged_partitions
from virnuc_dask.dataflow.models_on_workers import load_models
from virnuc_dask.dataflow.reading import WaveReader
from virnuc_dask.dataflow.result_parts import ResultParts
from virnuc_dask.dataflow.run_scores import RUN_TABLE
from virnuc_dask.dataflow.store import EmbeddingStore
from virnuc_dask.dataflow.store_metadata import MetadataProblem
from virnuc_dask.errors import InputFormatError, OutputDirError
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS
from virnuc_dask.partition_result import PartitionResult, failed_rows

logger = logging.getLogger(__name__)

#: Input bytes per dedup hash bucket (a bucket task holds ~40 bytes per ORF of its share).
DEDUP_BUCKET_BYTES = 64 * 2**20


@dataclasses.dataclass
class Embedded:
    """What :func:`embed_inputs` leaves: the ORF tables in the scratch ``root``, the store
    holding every ORF's scores (and embeddings when kept; rows in input order), the
    partition plan and stats."""

    store: EmbeddingStore
    blocks: list
    root: str
    buckets: int
    counts: list[int]
    plan: list[tuple[int, list[tuple[int, int, int]]]]
    todo: list[int]
    partition_stats: list[PartitionResult]
    facts: dict[str, Any]
    empty_inputs: list[tuple[str, str, str]]
    reads: int
    dedup: dict[str, dict[str, int]]
    damaged: dict[int, str]
    pairs: list[PairRows] = dataclasses.field(default_factory=list)
    metadata: tuple[MetadataProblem, ...] = ()

    @property
    def rows(self) -> int:
        return sum(self.counts)


def dedup_buckets(settings: Settings) -> int:
    """Hash buckets of a run with dedup: one per ~64 MiB of (decompressed) input."""
    if not settings.dedup:
        return 0
    size = 0
    for path in settings.inputs:
        nbytes, compressed = check_input(path)
        size += nbytes * (4 if compressed else 1)
    return max(1, -(-size // DEDUP_BUCKET_BYTES))


def embed_inputs(
    settings: Settings,
    client: Client,
    *,
    root: str,
    tick: Callable[..., None],
    timings: dict[str, float],
    select: Selection = six_frame_orfs,
    fingerprint_extra: dict[str, Any] | None = None,
    check_counts: Callable[[list, list[int]], None] | None = None,
    facts: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    results: Callable[[int], ResultParts] | None = None,
) -> Embedded:
    """Load the models, read and translate the inputs, embed every ORF into the store.

    ``select`` picks a chunk's ORFs (prediction: every stop-free frame);
    ``fingerprint_extra`` (what the selection depends on) joins the store's fingerprint;
    ``check_counts(blocks, orfs_per_block)`` may reject the inputs before anything is
    embedded (every block is then read before the first partition). Without
    ``settings.classifier`` no classifier is loaded (training). ``results(blocks)``:
    the result part files, written as the partitions finish (prediction). ``facts``:
    the models already registered (their facts, or a call that waits for them while
    this run reads); without it this run loads them.
    """
    t0 = time.perf_counter()
    layout = mate_layout(settings.inputs)
    blocks = with_mates(plan_blocks(list(settings.inputs), settings.blocksize), layout)
    tick("models", 0, 1)
    tick("read", 0, len(blocks))
    # The workers read while they load the models.
    run = _Stream(settings, client, blocks, root, tick, check_counts)
    run.reader = WaveReader(
        client,
        settings,
        blocks,
        root=root,
        buckets=dedup_buckets(settings),
        select=select,
        barrier=check_counts is not None,
        tick=tick,
    )
    try:
        if facts is None:
            facts = load_models(settings, client)
        elif callable(facts):  # loading while the blocks were read
            facts = facts()
        timings["load_models"] = time.perf_counter() - t0
        tick("models", 1, 1, precision=facts["precision"], device=facts["device"])
        fp = {**fingerprint(settings, facts["precision"]), **(fingerprint_extra or {})}
        run.parts = results(len(blocks)) if results is not None else None
        run.loop(facts, fp, timings, t0)
    except BaseException as exc:
        run.cancel()
        if run.opened and run.opened.created and isinstance(exc, InputFormatError):
            # The fixed input makes another run: what this one stored is of no use.
            shutil.rmtree(run.opened.store.path, ignore_errors=True)
            shutil.rmtree(run.opened.store.manifest, ignore_errors=True)
        raise
    reader, store = run.reader, run.opened.store
    total = reader.rows_decided
    store.finish(total)
    timings["embed"] = time.perf_counter() - run.embed_started
    stats = run.queue.stats
    if settings.classifier is not None:  # inside the embedding tasks, summed over them
        timings["classify"] = sum(e.classify_seconds for e in stats)
    dedup = {
        m: {"unique": reader.unique[m] if reader.buckets else total, "total": total}
        for m in MODEL_KEYS
    }
    logger.info("%d ORFs in %d partitions, %d already done", total, len(run.plan), len(run.reused))
    if reader.buckets:
        logger.info(
            "inputs embedded once: %s",
            ", ".join(f"{m.name} {dedup[m.key]['unique']} of {total}" for m in EMBEDDING_MODELS),
        )
    return Embedded(
        store,
        blocks,
        root,
        reader.buckets,
        [int(c) for c in reader.counts],
        run.plan,
        run.todo,
        stats,
        facts,
        reader.empty_inputs,
        reader.reads,
        dedup,
        run.damaged,
        run.pairs,
        run.opened.metadata,
    )


class _Stream:
    """The client's side of one streaming run: which partitions are ready, finished,
    written."""

    def __init__(self, settings, client, blocks, root, tick, check_counts) -> None:
        self.settings, self.client, self.blocks, self.root = settings, client, blocks, root
        self.tick, self.check_counts = tick, check_counts
        self.reader: WaveReader
        self.parts: ResultParts | None = None
        self.queue: EmbeddingQueue | None = None
        self.opened: OpenedStore | None = None
        self.refused: OutputDirError | None = None
        self.plan: list[tuple[int, list[tuple[int, int, int]]]] = []
        self.todo: list[int] = []
        self.reused: set[int] = set()
        self.finished: set[int] = set()
        self.failed: dict[int, tuple[str, str]] = {}
        self.damaged: dict[int, str] = {}
        self.pairs: list[PairRows] = []
        self.embed_started = time.perf_counter()
        self.embedded = 0
        self.scored = 0
        self.prefix = 0  # partitions before this one are all finished
        self.announced: tuple[int, int] | None = None
        self.reused_rows = 0

    def loop(self, facts, fp, timings, t0) -> None:
        reader, rows = self.reader, self.settings.partition_rows
        read_done = False
        while True:
            reader.advance(self.check_counts)
            if reader.done and not read_done:
                read_done = True
                self.pairs = reader.pairs()  # mates checked over both whole files
                timings["read_translate"] = time.perf_counter() - t0
                if self.refused is not None:
                    raise self.refused
            ready = reader.done or reader.rows_decided >= rows
            if ready and self.opened is None and self.refused is None:
                self._open(facts, fp)
            if self.queue is not None:
                self._plan_ready()
                self._write_ready()
                self.queue.top_up()
            waiting = reader.watched()
            if self.queue is not None:
                waiting += [*self.queue.pending]
            if self.parts is not None:
                waiting += [*self.parts.pending]
            if not waiting:
                if reader.done:
                    return
                continue  # nothing to wait for: advance decides the next wave
            try:
                done = wait(waiting, timeout=HEALTH_CHECK_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                if self.queue is not None and self.queue.pending:
                    check_embedding_workers(self.client, run=facts.get("run"))
                continue
            for future in done:
                self._take(future)

    def _take(self, future) -> None:
        if future in self.reader.pending:
            self.reader.finished(future)
        elif self.queue is not None and future in self.queue.pending:
            entry = self.queue.finished(future)
            self.finished.add(entry.partition)
            self.failed.update(failed_rows([entry]))
            self.embedded += 1
            total = self._partitions_total()
            self.tick("embed", self.embedded, total, partitions=(entry,))
            if self.settings.classifier is not None:
                self.scored += entry.rows - len(entry.failed)
                self.tick("classify", self.embedded, total, orfs=self.scored)
        elif self.parts is not None and future in self.parts.pending:
            self.tick("write", self.parts.finished(future), len(self.blocks))

    def _partitions_total(self) -> int:
        """Partitions this run computes: all of them once every wave is decided; until
        then those known and one more."""
        return len(self.todo) + (0 if self.reader.done else 1)

    def _open(self, facts, fp) -> None:
        dims = {m: facts[m] for m in MODEL_KEYS}
        try:
            self.opened = open_store(
                self.settings,
                fp,
                dims=dims,
                dedup=bool(self.reader.buckets),
                classes=2 if self.settings.classifier else 0,
            )
        except OutputDirError as exc:
            self.refused = exc  # raised once the inputs are read and checked
            return
        store = self.opened.store
        self.damaged = damaged_partitions(self.client, store)
        entries = store.entries()
        self.reused = set(entries)
        self.finished |= self.reused
        self.failed = failed_rows(entries.values())
        self.embed_started = time.perf_counter()
        self.queue = EmbeddingQueue(
            self.client,
            self.settings,
            store,
            self.root,
            self.reader.buckets,
            run_scores=facts.get(RUN_TABLE),
        )
        self.reused_rows = sum(e.rows for e in entries.values())

    def _plan_ready(self) -> None:
        """Queue the partitions whose rows are all decided."""
        reader, rows = self.reader, self.settings.partition_rows
        while True:
            start = len(self.plan) * rows
            stop = min(start + rows, reader.rows_decided)
            if start >= reader.rows_decided or (stop - start < rows and not reader.done):
                break
            p = len(self.plan)
            pieces = partition_pieces(reader.offsets, start, stop)
            self.plan.append((start, pieces))
            if p not in self.reused:
                self.queue.add(p, start, pieces, reader.rounds_of_rows(start, stop))
                self.todo.append(p)
        now = (self._partitions_total(), max(reader.rows_decided, self.reused_rows))
        if self.announced is None:  # the opening event
            self.tick("embed", 0, now[0], orfs_total=now[1], orfs_reused=self.reused_rows)
        elif now != self.announced:
            self.tick("embed", self.embedded, now[0], orfs_total=now[1])
        self.announced = now

    def _write_ready(self) -> None:
        """Submit the result part files of the blocks whose rows are all final."""
        if self.parts is None:
            return
        while self.prefix in self.finished:
            self.prefix += 1
        rows_final = min(self.prefix * self.settings.partition_rows, self.reader.rows_decided)
        self.parts.submit_ready(self.opened.store, self.reader.offsets, rows_final, self.failed)

    def cancel(self) -> None:
        # On a shared cluster: what is not done yet is not done.
        self.reader.cancel()
        if self.queue is not None:
            self.queue.cancel()
        if self.parts is not None:
            self.parts.cancel()
