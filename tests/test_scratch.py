"""The scratch beside the store: columnar ORF tables and the dedup index."""

from __future__ import annotations

import random

import numpy as np
import pytest

from virnuc_dask.core.orfs import BlockOrfs, ReadInfo, content_hashes
from virnuc_dask.core.plan import plan_waves
from virnuc_dask.core.translate import Orf
from virnuc_dask.dataflow import scratch


def _table(block: int, orfs: list[tuple[str, str, str]]) -> BlockOrfs:
    reads = [ReadInfo(f"read{block}", 10, 1, len(orfs), "in.fq", 1)]
    return BlockOrfs(block, reads, [Orf(i, n, p) for i, n, p in orfs])


def test_columns_read_back_any_slice(tmp_path):
    orfs = [(f"r_é{i}_chunk_1F1", "ACGT" * (i % 5), "MK" * (i % 3)) for i in range(40)]
    scratch.write_table(tmp_path, _table(3, orfs))
    for lo, hi in ((0, 40), (0, 0), (5, 6), (17, 40), (39, 40)):
        assert scratch.read_column(tmp_path, 3, "ids", lo, hi) == [o[0] for o in orfs[lo:hi]]
        assert scratch.read_column(tmp_path, 3, "nucleotide", lo, hi) == [o[1] for o in orfs[lo:hi]]
        assert scratch.read_column(tmp_path, 3, "protein", lo, hi) == [o[2] for o in orfs[lo:hi]]
    assert scratch.read_reads(tmp_path, 3) == _table(3, orfs).reads


@pytest.mark.parametrize("buckets", [1, 3, 8])
def test_sources_are_the_first_copy_of_each_input(tmp_path, buckets):
    rng = random.Random(buckets)
    pool = [
        ("".join(rng.choices("ACGT", k=6)), "".join(rng.choices("MKV", k=2))) for _ in range(25)
    ]
    blocks = [[rng.choice(pool) for _ in range(rng.randint(0, 30))] for _ in range(5)]
    for b, rows in enumerate(blocks):
        scratch.write_table(
            tmp_path,
            _table(b, [(f"o{b}_{i}", n, p) for i, (n, p) in enumerate(rows)]),
            buckets=buckets,
        )
    counts = [len(rows) for rows in blocks]
    offsets = np.cumsum([0] + counts)[:-1].tolist()
    flat = [row for rows in blocks for row in rows]
    for model, column in (("dnabert", 0), ("esm", 1)):
        found = [scratch.dedup_bucket(tmp_path, model, k, offsets) for k in range(buckets)]
        first: dict[str, int] = {}
        expected = [first.setdefault(row[column], r) for r, row in enumerate(flat)]
        assert sum(n for n, _ in found) == len(flat)
        assert sum(u for _, u in found) == len(first)
        for lo, hi in ((0, len(flat)), (7, 31), (len(flat) - 1, len(flat))):
            assert scratch.sources(tmp_path, model, buckets, lo, hi).tolist() == expected[lo:hi]


@pytest.mark.parametrize("buckets", [1, 4])
def test_waves_decide_as_the_whole_input_at_once(tmp_path, buckets):
    rng = random.Random(7 + buckets)
    pool = ["".join(rng.choices("ACG", k=3)) for _ in range(15)]
    blocks = [[rng.choice(pool) for _ in range(rng.randint(0, 20))] for _ in range(7)]
    for b, rows in enumerate(blocks):
        table = [(f"o{b}_{i}", n, n) for i, n in enumerate(rows)]
        scratch.write_table(tmp_path, _table(b, table), buckets=buckets)
    offsets = np.cumsum([0] + [len(rows) for rows in blocks])[:-1].tolist()
    flat = [row for rows in blocks for row in rows]
    first: dict[str, int] = {}
    expected = [first.setdefault(row, r) for r, row in enumerate(flat)]
    for model in ("dnabert", "esm"):
        found = []
        for wave, (lo, hi) in enumerate(plan_waves(len(blocks))):
            found += [
                scratch.dedup_bucket(tmp_path, model, k, offsets[lo:hi], first_block=lo, wave=wave)
                for k in range(buckets)
            ]
        assert sum(n for n, _ in found) == len(flat)
        assert sum(u for _, u in found) == len(first)
        assert scratch.sources(tmp_path, model, buckets, 0, len(flat)).tolist() == expected
        assert (
            scratch.sources(tmp_path, model, buckets, 3, 9, [0, 1, 2]).tolist() == (expected[3:9])
        )


def test_content_hashes_are_128_bit_and_distinguish_inputs():
    hashes = content_hashes(["ACGT", "ACGT", "ACGA", ""])
    assert hashes.shape == (4, 2) and hashes.dtype == np.uint64
    assert (hashes[0] == hashes[1]).all()
    assert len({tuple(h) for h in hashes.tolist()}) == 3
