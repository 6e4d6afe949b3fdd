"""Planning a run over its blocks: reads whose id came before, the partitions of the
input-order ORF rows, inputs without any record, and failed rows by block. Pure numpy."""

from __future__ import annotations

import numpy as np


def duplicate_reads(hashes: list[np.ndarray]) -> dict[int, dict[int, str]]:
    """Per block, the positions of reads whose id already occurred earlier in the input."""
    allh = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    _, first = np.unique(allh, return_index=True)
    dup = np.ones(len(allh), dtype=bool)
    dup[first] = False
    out: dict[int, dict[int, str]] = {}
    offsets = np.cumsum([0] + [len(h) for h in hashes])
    for pos in np.flatnonzero(dup):
        block = int(np.searchsorted(offsets, pos, side="right") - 1)
        out.setdefault(block, {})[int(pos - offsets[block])] = "duplicate read id"
    return out


def plan_partitions(counts: list[int], rows: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Cut the input-order ORF rows into partitions: (row_start, [(block, lo, hi), ...])."""
    offsets = np.cumsum([0] + counts)
    total = int(offsets[-1])
    plan = []
    for start in range(0, total, rows):
        stop = min(start + rows, total)
        pieces = []
        for block, (b0, b1) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            lo, hi = max(start, b0), min(stop, b1)
            if lo < hi:
                pieces.append((block, int(lo - b0), int(hi - b0)))
        plan.append((start, pieces))
    return plan


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
