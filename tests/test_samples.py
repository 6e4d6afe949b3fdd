"""Real samples through the pipeline: FASTQ inputs give the FASTA results."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from helpers import CASES, TINY, assert_matches_reference, read_fasta_pairs

from virnuc_dask.config import load_settings
from virnuc_dask.dataflow.pipeline import predict

RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv",
           "read_predictions.tsv")


def fasta_to_fastq(src: Path, dest: Path, *, compressed: bool = False) -> Path:
    """The records of ``src`` as four-line FASTQ (full titles kept, qualities invented)."""
    titles = [line[1:].rstrip("\r\n") for line in src.open() if line.startswith(">")]
    pairs = read_fasta_pairs(src)
    text = "".join(f"@{title}\n{seq}\n+\n{'?' * len(seq)}\n"
                   for title, (_, seq) in zip(titles, pairs, strict=True))
    dest.write_bytes(gzip.compress(text.encode()) if compressed else text.encode())
    return dest


def _run(client, inputs, out: Path, length: int, **extra):
    settings = load_settings(
        inputs=[str(p) for p in inputs],
        overrides={"out": str(out), "length": length, "precision": "fp32",
                   "blocksize": 4096, "partition_rows": 37, **TINY, **extra})
    return predict(settings, client)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("compressed", [False, True])
def test_fastq_gives_the_original_results(client, reference, tmp_path, case, compressed):
    src = reference / "dev" / case / "input.fa"
    fq = fasta_to_fastq(src, tmp_path / ("reads.dat" if compressed else "reads.fq"),
                        compressed=compressed)
    length = 500 if compressed else 300
    result = _run(client, [fq], tmp_path / "out", length)
    assert result.exit_code == 0
    assert_matches_reference(tmp_path / "out", reference / "dev" / case / f"L{length}")


def test_mixed_formats_give_the_fasta_run(client, reference, tmp_path):
    src = reference / "dev" / "mixed" / "input.fa"
    lines = src.read_text().splitlines(keepends=True)
    heads = [i for i, line in enumerate(lines) if line.startswith(">")]
    cut = heads[len(heads) // 2]
    first, second = tmp_path / "first.fa", tmp_path / "second.fa"
    first.write_text("".join(lines[:cut]))
    second.write_text("".join(lines[cut:]))
    fasta_to_fastq(first, tmp_path / "first.fq.gz", compressed=True)
    _run(client, [src], tmp_path / "fasta", 300)
    result = _run(client, [tmp_path / "first.fq.gz", second], tmp_path / "mixed", 300)
    assert result.exit_code == 0
    for name in RESULTS:
        assert (tmp_path / "mixed" / name).read_bytes() == \
            (tmp_path / "fasta" / name).read_bytes(), name
