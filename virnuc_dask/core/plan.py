"""Planning a run over its blocks: the waves in which blocks are taken, reads whose id
came before, the partitions of the input-order ORF rows, inputs without any record, and
failed rows by block. Pure numpy."""

from __future__ import annotations

import numpy as np


def plan_waves(blocks: int, *, first: int = 1, growth: int = 2) -> list[tuple[int, int]]:
    """Consecutive ranges ``[lo, hi)`` of blocks, in input order, each ``growth`` times
    the one before: the first partitions start after ``first`` blocks are read, and the
    number of waves grows with the logarithm of the number of blocks.

    >>> plan_waves(10)
    [(0, 1), (1, 3), (3, 7), (7, 10)]
    >>> plan_waves(0), plan_waves(3, first=3)
    ([], [(0, 3)])
    """
    waves, lo, size = [], 0, max(1, first)
    while lo < blocks:
        hi = min(blocks, lo + size)
        waves.append((lo, hi))
        lo, size = hi, size * growth
    return waves


def duplicate_reads(
    hashes: list[np.ndarray], seen: np.ndarray | None = None, *, first_block: int = 0
) -> tuple[dict[int, dict[int, str]], np.ndarray]:
    """Per block, the positions of reads whose id already occurred earlier in the input,
    and the sorted ids seen so far.

    ``hashes``: the read id hashes of consecutive blocks from ``first_block`` on;
    ``seen``: the sorted ids of every earlier block (what the previous call returned).
    The blocks in the result are numbered from ``first_block``.

    >>> dups, seen = duplicate_reads([np.array([5, 7], np.uint64)])
    >>> duplicate_reads([np.array([7, 9, 9], np.uint64)], seen, first_block=1)[0]
    {1: {0: 'duplicate read id', 2: 'duplicate read id'}}
    """
    earlier = np.zeros(0, np.uint64) if seen is None else seen
    allh = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    _, first = np.unique(allh, return_index=True)
    dup = np.ones(len(allh), dtype=bool)
    dup[first] = False
    if len(earlier):
        pos = np.minimum(np.searchsorted(earlier, allh), len(earlier) - 1)
        dup |= earlier[pos] == allh
    out: dict[int, dict[int, str]] = {}
    offsets = np.cumsum([0] + [len(h) for h in hashes])
    for pos in np.flatnonzero(dup):
        block = int(np.searchsorted(offsets, pos, side="right") - 1)
        out.setdefault(first_block + block, {})[int(pos - offsets[block])] = "duplicate read id"
    return out, np.union1d(earlier, allh)


def plan_partitions(counts: list[int], rows: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Cut the input-order ORF rows into partitions: (row_start, [(block, lo, hi), ...])."""
    offsets = np.cumsum([0] + counts)
    total = int(offsets[-1])
    return [
        (start, partition_pieces(offsets, start, min(start + rows, total)))
        for start in range(0, total, rows)
    ]


def partition_pieces(offsets, start: int, stop: int) -> list[tuple[int, int, int]]:
    """The ``(block, lo, hi)`` pieces of rows ``[start, stop)``; ``offsets``: the global
    row of each block's first ORF, then the end of the last block given.

    >>> partition_pieces([0, 3, 3, 8], 2, 6)
    [(0, 2, 3), (2, 0, 3)]
    """
    pieces = []
    for block, (b0, b1) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
        lo, hi = max(start, b0), min(stop, b1)
        if lo < hi:
            pieces.append((block, int(lo - b0), int(hi - b0)))
    return pieces


def files_without_records(blocks: list, reads_per_block: list[int]) -> list[tuple[str, str, str]]:
    """A failed-records row (path, ``input``, why) for each input file without a record."""
    reads: dict[str, int] = {}
    for block, n in zip(blocks, reads_per_block, strict=True):
        reads[block.path] = reads.get(block.path, 0) + n
    return [
        (path, "input", "holds no FASTA record (empty file)") for path, n in reads.items() if not n
    ]


def rows_in_block(
    failed: dict[int, tuple[str, str]], offsets: np.ndarray, block: int
) -> dict[int, tuple[str, str]]:
    lo, hi = int(offsets[block]), int(offsets[block + 1])
    return {r: f for r, f in failed.items() if lo <= r < hi}
