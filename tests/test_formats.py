"""Input formats: told from the content, each read by its own reader, each failing with
its own error."""

from __future__ import annotations

import gzip

import pytest

from virnuc_dask.core.formats import FORMATS, detect, plan_blocks, read_block
from virnuc_dask.core.records import InputBlock
from virnuc_dask.errors import FastaFormatError, FastqFormatError, InputFormatError

FASTA = ">r1 first\nACGT\nAC\n>r2\nGGG\n"
FASTQ = "@r1 first\nACGTAC\n+\nIIIIII\n@r2\nGGG\n+\nIII\n"


def test_every_format_has_its_own_record_marker():
    assert [f.name for f in FORMATS] == ["fasta", "fastq"]
    assert len({f.marker for f in FORMATS}) == len(FORMATS)
    assert detect(b"\n\n@r1\nA\n+\nI\n").name == "fastq"
    assert detect(b">r1\nA\n").name == "fasta"
    assert detect(b"").name == "fasta"  # an empty file gives no records, as FASTA


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize(("text", "name"), [(FASTA, "fasta"), (FASTQ, "fastq")])
def test_a_file_is_read_by_the_reader_of_its_content(tmp_path, text, name, compressed):
    path = tmp_path / "reads.txt"  # the name says nothing
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compressed else data)
    blocks = plan_blocks([str(path)], blocksize=7)
    assert all(type(b) is InputBlock and b.format == name for b in blocks)
    assert len(blocks) == (1 if compressed else -(-len(data) // 7))
    records = [r for b in blocks for r in read_block(b)]
    assert [(r.id, r.line) for r in records] == [("r1", 1), ("r2", 4 if name == "fasta" else 5)]


def test_each_format_fails_with_its_own_error(tmp_path):
    fastq = tmp_path / "bad.fq"
    fastq.write_text("@r1\nACGT\n+\nIII\n")  # qualities shorter than the sequence
    with pytest.raises(FastqFormatError) as err:
        [r for b in plan_blocks([str(fastq)]) for r in read_block(b)]
    assert not isinstance(err.value, FastaFormatError) and err.value.line == 4  # qualities
    fasta = tmp_path / "bad.fa"
    fasta.write_text("not a header\n>r1\nACGT\n")
    with pytest.raises(FastaFormatError) as err:
        plan_blocks([str(fasta)])
    assert not isinstance(err.value, FastqFormatError)
    assert isinstance(err.value, InputFormatError) and err.value.line == 1
