"""The dataflow's small tasks, run on workers: read a block into the scratch, load a
partition's rows, write a block's result part files."""

from __future__ import annotations

import logging

import numpy as np
import zarr

from virnuc_dask.core.orfs import BlockOrfs, Selection, id_hashes, read_orfs
from virnuc_dask.core.pairs import pair_hashes
from virnuc_dask.core.records import InputBlock
from virnuc_dask.core.translate import six_frame_orfs
from virnuc_dask.dataflow.outputs import BlockCounts, write_block
from virnuc_dask.dataflow.partition_task import (
    PartitionRows,
)
from virnuc_dask.dataflow.scratch import (
    read_column,
    read_reads,
    write_table,
)
from virnuc_dask.dataflow.scratch import sources as dedup_sources
from virnuc_dask.dataflow.store import SCORES, read_rows
from virnuc_dask.models.registry import MODEL_KEYS

logger = logging.getLogger(__name__)


def read_block_task(
    block: InputBlock,
    chunk_size: int,
    root: str,
    buckets: int,
    excluded: dict[int, str] | None = None,
    select: Selection = six_frame_orfs,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Read and translate one block into the scratch; (ORFs, read id hashes, pair id
    hashes of a mate file's reads (empty for other files))."""
    table = read_orfs(block, chunk_size, select)
    if excluded:
        table = table.without_reads(excluded)
    write_table(root, table, buckets=buckets)
    mates = (
        pair_hashes([r.id for r in table.reads], block.mate)
        if block.mate
        else np.zeros(0, np.uint64)
    )
    return len(table.orfs), id_hashes(table), mates


def load_partition(
    root: str,
    pieces: list[tuple[int, int, int]],
    row_start: int,
    rows: int,
    buckets: int,
    waves: list[int] | None = None,
) -> PartitionRows:
    """A partition's rows from the scratch; ``waves``: those in which their dedup was
    decided (None: every wave)."""
    ids, nucleotides, proteins = [], [], []
    for block, lo, hi in pieces:
        ids += read_column(root, block, "ids", lo, hi)
        nucleotides += read_column(root, block, "nucleotide", lo, hi)
        proteins += read_column(root, block, "protein", lo, hi)
    found = None
    if buckets:
        found = {
            m: dedup_sources(root, m, buckets, row_start, row_start + rows, waves)
            for m in MODEL_KEYS
        }
    return PartitionRows(ids, nucleotides, proteins, found)


def write_block_task(
    root: str,
    block: int,
    row_start: int,
    store_path: str,
    parts: str,
    failed: dict[int, tuple[str, str]],
) -> BlockCounts:
    reads = read_reads(root, block)
    ids = read_column(root, block, "ids")
    group = zarr.open_group(store_path, mode="r")
    stop = row_start + len(ids)
    mine = {r - row_start: f for r, f in failed.items() if row_start <= r < stop}
    index = f"{SCORES}_source"
    source = read_rows(group, index, row_start, stop) if index in group else None
    if failed and source is not None:
        # A row that takes an earlier row's scores (it repeats both its inputs) failed
        # when that row failed.
        for i in np.flatnonzero(source != np.arange(row_start, stop)):
            f = failed.get(int(source[i]))
            if f is not None:
                mine.setdefault(int(i), f)
    scores = read_rows(group, SCORES, row_start, stop, source)
    return write_block(BlockOrfs(block, reads, ids), scores, parts, mine)
