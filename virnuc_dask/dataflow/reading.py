"""Reading the inputs in waves: every block is read and translated into the scratch by a
task of its own, and the blocks are taken in waves (consecutive blocks in input order,
each wave twice the one before, :func:`~virnuc_dask.core.plan.plan_waves`). Once a wave's
blocks are read and every earlier wave is decided:

- reads whose id came before (in this wave or an earlier one) are dropped: their
  blocks are read again without them;
- the mates read so far of both files of a pair are compared;
- with dedup, one task per model and hash bucket decides the wave's rows against the
  first copies of the earlier waves (:func:`~virnuc_dask.dataflow.scratch.dedup_bucket`,
  chained wave to wave);
- then the wave's rows are *decided*: the partitions that lie in decided rows can be
  embedded while later blocks are still being read.

The decisions are those of the whole input at once (first occurrence in input order);
no task holds the content hashes of more than one bucket. ``check_counts`` (training:
the inputs are refused before anything is embedded) takes all blocks as one wave.

Usage (``client`` a :class:`distributed.Client`)::

    reader = WaveReader(client, settings, blocks, root=root, buckets=4)
    while not reader.done:
        for future in distributed.wait(reader.pending, return_when="FIRST_COMPLETED").done:
            reader.finished(future)
        reader.advance()   # reader.rows_decided grows
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from distributed import Client

from virnuc_dask.config import Settings
from virnuc_dask.core.orfs import Selection
from virnuc_dask.core.pairs import (
    PairRows,
    check_mates,
    check_mates_so_far,
    mate_layout,
    mate_pairs,
)
from virnuc_dask.core.plan import duplicate_reads, files_without_records, plan_waves
from virnuc_dask.core.records import InputBlock
from virnuc_dask.core.translate import six_frame_orfs
from virnuc_dask.dataflow.block_tasks import read_block_task
from virnuc_dask.dataflow.dashboard import unique_key
from virnuc_dask.dataflow.embedding_graph import DEDUP_PRIORITY
from virnuc_dask.dataflow.scratch import dedup_bucket
from virnuc_dask.models.registry import MODEL_KEYS

logger = logging.getLogger(__name__)


def read_order(blocks: list[InputBlock]) -> list[int]:
    """The order the blocks are submitted to be read in: input order, but the first
    block of a second mate file right after the first block of its first mate file, so
    that the two files' first reads are compared within seconds (the waves are still
    decided in input order).

    >>> b = lambda path, start, mate=None: InputBlock(path, 0, start, None, mate=mate)
    >>> read_order([b("R1", 0, 1), b("R1", 9, 1), b("R2", 0, 2), b("R2", 9, 2), b("S", 0)])
    [0, 2, 1, 3, 4]
    """
    order = list(range(len(blocks)))
    firsts = [i for i, block in enumerate(blocks) if block.start == 0]
    for before, i in itertools.pairwise(firsts):
        if blocks[i].mate == 2 and blocks[before].mate == 1:
            order.remove(i)
            order.insert(order.index(before) + 1, i)
    return order


class WaveReader:
    """The reading side of a run, wave by wave; see the module docstring.

    ``rows_decided``: rows (from the first) whose blocks are read and whose dedup is
    decided; ``counts``: ORFs per block (None: not known yet); ``done``: every wave is
    decided (then :meth:`pairs` and :attr:`empty_inputs` are final).
    """

    def __init__(
        self,
        client: Client,
        settings: Settings,
        blocks: list[InputBlock],
        *,
        root: str,
        buckets: int,
        select: Selection = six_frame_orfs,
        barrier: bool = False,
        tick: Callable[..., None] = lambda *a, **k: None,
    ) -> None:
        self.client, self.settings, self.blocks = client, settings, blocks
        self.root, self.buckets, self.select, self.tick = root, buckets, select, tick
        self.mate_pairs = mate_pairs(mate_layout(settings.inputs))
        self.waves = [(0, len(blocks))] if barrier and blocks else plan_waves(len(blocks))
        self.wave = 0  # the first wave not decided yet
        self.phase = "read"
        self.counts: list[int | None] = [None] * len(blocks)
        self.offsets = [0]  # global row of each decided block's first ORF, and the end
        # Decided waves: (first row, end row, dedup round or None); a dedup round is a
        # wave with rows (a wave without rows has no dedup tasks).
        self.wave_rows: list[tuple[int, int, int | None]] = []
        self.rounds = 0
        self._round: int | None = None
        self.read_ids: dict[int, np.ndarray] = {}  # of blocks read, until their wave is decided
        self.mates: dict[int, np.ndarray] = {}  # pair-id hashes of the mate files' blocks
        self.reads_per_block: dict[int, int] = {}
        self.seen_ids: np.ndarray | None = None
        self.unique = dict.fromkeys(MODEL_KEYS, 0)
        self.pending: dict[Any, tuple[str, Any]] = {}
        self._chain: dict[tuple[str, int], Any] = {}  # the last dedup task of each bucket
        self.reads = 0
        self.orfs_read = 0
        self.blocks_read = 0
        # (No retries: a read fails because of the file, and would fail again.) In input
        # order, one graph each: the scheduler runs earlier blocks first.
        for i in read_order(blocks):
            self._submit(
                ("read", i),
                read_block_task,
                blocks[i],
                settings.length,
                root,
                buckets,
                None,
                select,
            )

    # -- futures ------------------------------------------------------------------------

    def _submit(self, what: tuple[str, Any], func, *args, priority: int = 0, **kwargs) -> None:
        stage = "dedup" if what[0] == "dedup" else "read_orfs"
        future = self.client.submit(
            func, *args, key=unique_key(stage), priority=priority, pure=False, **kwargs
        )
        self.pending[future] = what
        if what[0] == "dedup":
            self._chain[what[1][:2]] = future

    def finished(self, future: Any) -> None:
        """Take a finished future of :attr:`pending` (raises what its task raised)."""
        kind, what = self.pending.pop(future)
        result = future.result()
        if kind == "read":
            n, ids, mates = result
            self.read_ids[what] = ids
            self.reads_per_block[what] = len(ids)
            if self.blocks[what].mate:
                self.mates[what] = mates
                if self.blocks[what].start == 0:
                    # A file's first block: mates out of order from the first reads on (a
                    # wrong pairing) stop the run now, before the first file is embedded.
                    check_mates_so_far(self.blocks, self.mates, self.mate_pairs)
            self.counts[what] = n
            self.reads += len(ids)
            self.orfs_read += n
            self.blocks_read += 1
            self.tick(
                "read", self.blocks_read, len(self.blocks), reads=self.reads, orfs=self.orfs_read
            )
        elif kind == "reread":
            self.counts[what] = result[0]
        else:  # dedup
            self.unique[what[0]] += result[1]

    def watched(self, reads: int = 64) -> list:
        """The futures worth waiting for: every dedup and repeated read, and the reads of
        the first ``reads`` blocks not read yet (the later ones are taken once they come
        into that window: a wait on thousands of futures at a time costs the client)."""
        others = [f for f, (kind, _) in self.pending.items() if kind != "read"]
        first = [f for f, (kind, _) in self.pending.items() if kind == "read"][:reads]
        return others + first

    def cancel(self) -> None:
        self.client.cancel(list(self.pending))

    # -- waves --------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.wave >= len(self.waves)

    @property
    def rows_decided(self) -> int:
        return self.offsets[-1]

    def advance(self, check_counts: Callable[[list, list[int]], None] | None = None) -> None:
        """Decide the waves whose blocks are read, in order, as far as they go;
        ``check_counts(blocks, counts)`` is called once every block's count is known,
        before that wave's rows are decided."""
        while not self.done:
            lo, hi = self.waves[self.wave]
            if self.phase == "read":
                if any(b not in self.read_ids for b in range(lo, hi)):
                    return
                self._decide_reads(lo, hi)
                self.phase = "reread"
            if self.phase == "reread":
                if any(k == "reread" for k, _ in self.pending.values()):
                    return
                if hi == len(self.blocks) and check_counts is not None:
                    check_counts(self.blocks, [int(c) for c in self.counts])
                self._submit_dedup(lo, hi)
                self.phase = "dedup"
            if self.phase == "dedup":
                if any(k == "dedup" for k, _ in self.pending.values()):
                    return
                start = self.offsets[-1]
                for b in range(lo, hi):
                    self.offsets.append(self.offsets[-1] + int(self.counts[b]))
                self.wave_rows.append((start, self.offsets[-1], self._round))
                self.wave += 1
                self.phase = "read"

    def _decide_reads(self, lo: int, hi: int) -> None:
        # Mates out of order stop the run as soon as both files have given them.
        check_mates_so_far(self.blocks, self.mates, self.mate_pairs)
        duplicates, self.seen_ids = duplicate_reads(
            [self.read_ids.pop(b) for b in range(lo, hi)], self.seen_ids, first_block=lo
        )
        for block, excluded in duplicates.items():  # rare: written again without those reads
            self.counts[block] = None
            self._submit(
                ("reread", block),
                read_block_task,
                self.blocks[block],
                self.settings.length,
                self.root,
                self.buckets,
                excluded,
                self.select,
                priority=DEDUP_PRIORITY,
            )

    def _submit_dedup(self, lo: int, hi: int) -> None:
        """Submit the wave's dedup tasks; ``_round``: their round (None: none)."""
        offsets = np.cumsum([self.offsets[-1]] + [int(c) for c in self.counts[lo:hi]])
        self._round = None
        if not self.buckets or offsets[-1] == offsets[0]:
            return
        self._round = self.rounds
        self.rounds += 1
        for m in MODEL_KEYS:
            for k in range(self.buckets):
                self._submit(
                    ("dedup", (m, k, self.wave)),
                    dedup_bucket,
                    self.root,
                    m,
                    k,
                    [int(o) for o in offsets[:-1]],
                    first_block=lo,
                    wave=self._round,
                    previous=self._chain.get((m, k)),
                    priority=DEDUP_PRIORITY,
                )

    # -- once every wave is decided ------------------------------------------------------

    def pairs(self) -> list[PairRows]:
        """The rows of every pair of mate files, checked over both whole files."""
        none = np.zeros(0, np.uint64)
        hashes = [self.mates.get(b, none) for b in range(len(self.blocks))]
        return check_mates(self.blocks, hashes, self.mate_pairs)

    @property
    def empty_inputs(self) -> list[tuple[str, str, str]]:
        return files_without_records(
            self.blocks, [self.reads_per_block[b] for b in range(len(self.blocks))]
        )

    def rounds_of_rows(self, lo: int, hi: int) -> list[int]:
        """The dedup rounds that decided rows ``[lo, hi)`` (see ``wave_rows``)."""
        return [r for a, b, r in self.wave_rows if r is not None and a < hi and lo < b]
