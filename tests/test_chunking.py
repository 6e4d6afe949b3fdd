"""Chunking matches VirNucPro's split_fasta_chunk, short last chunk included."""

from __future__ import annotations

from pathlib import Path

import pytest
from Bio import SeqIO
from helpers import REFERENCE

from virnuc_dask.core.chunking import chunk_record, chunk_spans

CASES = sorted(p.parent for p in (REFERENCE / "dev").glob("*/input.fa"))


def original_spans(seq_length: int, chunk_size: int) -> list[tuple[int, int]]:
    """Literal restatement of the original loop (spans instead of record slices)."""
    num_chunks = -(-seq_length // chunk_size)
    total_chunk_length = num_chunks * chunk_size
    repeat_length = total_chunk_length - seq_length
    repeat_region = repeat_length / num_chunks
    lower_int = int(repeat_region)
    upper_int = lower_int + 1
    low_up_numbers = [lower_int] * (num_chunks - 1)
    need_to_add_up_nums = repeat_length - sum(low_up_numbers)
    final_low_up_numbers = (
        [upper_int] * need_to_add_up_nums
        + [lower_int] * (num_chunks - 1 - need_to_add_up_nums)
        + [0]
    )
    spans = []
    move_step = 0
    for a, b in zip(range(0, seq_length, chunk_size), final_low_up_numbers, strict=False):
        # Python slicing of record[x:y] clamps y to the length
        lo = a - move_step if a > 1 else a
        spans.append((lo, min(lo + chunk_size, seq_length)))
        move_step += b
    return spans


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 300, 500])
def test_spans_equal_original_loop(chunk_size: int) -> None:
    for length in range(1, 3001):
        assert chunk_spans(length, chunk_size) == original_spans(length, chunk_size), length


@pytest.mark.parametrize(
    "length, chunk_size, spans",
    [
        (301, 300, [(0, 300), (150, 301)]),
        (1000, 300, [(0, 300), (249, 549), (498, 798), (747, 1000)]),
        (600, 300, [(0, 300), (300, 600)]),
        (300, 300, [(0, 300)]),
        (2, 300, [(0, 2)]),
    ],
)
def test_readme_examples(length: int, chunk_size: int, spans: list[tuple[int, int]]) -> None:
    assert chunk_spans(length, chunk_size) == spans


def test_invalid_arguments() -> None:
    for length, size in ((0, 300), (-1, 300), (10, 0), (10, -5)):
        with pytest.raises(ValueError):
            chunk_spans(length, size)
    with pytest.raises(ValueError):
        chunk_record("r", "", 300)


def test_chunk_record_ids_and_case() -> None:
    assert chunk_record("r.1|x", "acgtNNacgT", 4) == [
        ("r.1|x_chunk_1", "acgt"),
        ("r.1|x_chunk_2", "tNNa"),
        ("r.1|x_chunk_3", "acgT"),
    ]
    assert chunk_record("r", "ACGTA", 3) == [("r_chunk_1", "ACG"), ("r_chunk_2", "GTA")]


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
@pytest.mark.parametrize("length", [300, 500])
def test_reference_chunks(case: Path, length: int) -> None:
    got = [
        chunk
        for rec in SeqIO.parse(case / "input.fa", "fasta")
        for chunk in chunk_record(rec.id, str(rec.seq), length)
    ]
    expected = [
        (rec.id, str(rec.seq))
        for rec in SeqIO.parse(case / f"L{length}" / f"input_chunked{length}.fa", "fasta")
    ]
    assert got == expected
