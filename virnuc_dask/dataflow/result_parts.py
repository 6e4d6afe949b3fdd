"""The result files' part files, written while the run goes on: one task per block
(``write-results``), submitted as soon as the block's rows and every row before them are
final (their partitions finished: a row that repeats an earlier input takes that row's
scores, and fails with it), then put together in input order at the end
(:func:`~virnuc_dask.dataflow.outputs.assemble`).

Usage (``client`` a :class:`distributed.Client`)::

    parts = ResultParts(client, out, root=root, buckets=4, blocks=3)
    parts.submit_ready(store, offsets=[0, 10, 25, 40], rows_final=25, failed={})
    ...  # parts.finished(future) for each of parts.pending as it finishes
    counts = parts.assemble(empty_inputs)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from distributed import Client

from virnuc_dask.core.plan import rows_in_block
from virnuc_dask.dataflow.block_tasks import write_block_task
from virnuc_dask.dataflow.dashboard import unique_key
from virnuc_dask.dataflow.embedding_graph import WRITE_PRIORITY
from virnuc_dask.dataflow.outputs import BlockCounts, assemble
from virnuc_dask.dataflow.store import EmbeddingStore

PARTS = ".parts"


class ResultParts:
    """The part files of a run's ``blocks`` blocks under ``out``/.parts (removed at the
    end, whatever happens)."""

    def __init__(self, client: Client, out: Path, *, root: str, buckets: int, blocks: int) -> None:
        self.client, self.out, self.root, self.buckets = client, Path(out), root, buckets
        self.blocks = blocks
        self.parts = self.out / PARTS
        shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir()
        self.next_block = 0  # the first block not submitted
        self.pending: dict[Any, int] = {}
        self.counts: dict[int, BlockCounts] = {}

    def submit_ready(
        self,
        store: EmbeddingStore,
        offsets: list[int],
        rows_final: int,
        failed: dict[int, tuple[str, str]],
    ) -> None:
        """Submit the blocks whose rows all lie before ``rows_final``; ``offsets``: the
        first row of each block known, then the end of the last; ``failed``: the failed
        rows so far (of finished partitions)."""
        while self.next_block < len(offsets) - 1 and offsets[self.next_block + 1] <= rows_final:
            b = self.next_block
            mine = failed if self.buckets else rows_in_block(failed, offsets, b)
            future = self.client.submit(
                write_block_task,
                self.root,
                b,
                int(offsets[b]),
                str(store.path),
                str(self.parts),
                {r: f for r, f in mine.items() if r < offsets[b + 1]},
                key=unique_key("write-results"),
                priority=WRITE_PRIORITY,
                pure=False,
            )
            self.pending[future] = b
            self.next_block += 1

    def finished(self, future: Any) -> int:
        """Take a finished future of :attr:`pending`; the blocks written so far."""
        block = self.pending.pop(future)
        self.counts[block] = future.result()
        return len(self.counts)

    def wait_all(self) -> None:
        """Wait for the blocks submitted (the run's last ones)."""
        for future in list(self.pending):
            self.finished(future)

    def assemble(self, empty_inputs: list[tuple[str, str, str]]) -> BlockCounts:
        """Put every block's part files together in input order; the counts of all."""
        total = BlockCounts(failed=len(empty_inputs))
        for b in range(self.blocks):
            total.add(self.counts[b])
        assemble(self.parts, self.out, self.blocks, empty_inputs)
        return total

    def cancel(self) -> None:
        self.client.cancel(list(self.pending))

    def remove(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
