"""FASTQ reading: records as Biopython gives them, in any block size; errors located."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest
from Bio import bgzf

from virnuc_dask.core.formats import inspect_input, plan_blocks, read_block
from virnuc_dask.errors import FastqFormatError


def _reads(n: int, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (f"r{i} lane=1 sample {i}", "".join(rng.choices("ACGTN", k=rng.randint(0, 180))))
        for i in range(n)
    ]


def _fastq(reads, newline: str = "\n", plus_title: bool = False) -> str:
    return "".join(
        f"@{t}{newline}{s}{newline}+{t if plus_title else ''}{newline}{'F' * len(s)}{newline}"
        for t, s in reads
    )


def _records(paths, blocksize: int) -> list[tuple[str, str, str, int]]:
    return [
        (r.id, r.sequence, Path(r.path).name, r.line)
        for b in plan_blocks([str(p) for p in paths], blocksize)
        for r in read_block(b)
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_block_size_gives_every_record_once(tmp_path, newline):
    reads = _reads(200)
    path = tmp_path / "reads.fq"
    path.write_bytes(("\n" + _fastq(reads, newline, plus_title=True) + "\n").encode())
    expected = [(t.split()[0], s, "reads.fq", 2 + 4 * i) for i, (t, s) in enumerate(reads)]
    for blocksize in (1, 5, 64, 999, 4096, 1 << 20):
        assert _records([path], blocksize) == expected, blocksize


def test_records_equal_biopython(tmp_path):
    from Bio import SeqIO

    path = tmp_path / "reads.fastq"
    path.write_text(_fastq(_reads(50)))
    expected = [(r.id, str(r.seq)) for r in SeqIO.parse(str(path), "fastq")]
    assert [(i, s) for i, s, _, _ in _records([path], 300)] == expected


def test_gzip_multi_member_and_bgzip_detected_from_content(tmp_path):
    reads = _reads(120)
    raw = _fastq(reads).encode()
    members = tmp_path / "members.dat"  # no telling name: the content decides
    with open(members, "wb") as fh:
        for k in range(0, len(raw), 1000):
            fh.write(gzip.compress(raw[k : k + 1000]))
    bgz = tmp_path / "reads.fq.bgz"
    with bgzf.BgzfWriter(str(bgz), "wb") as fh:
        fh.write(raw)
    expected = [(t.split()[0], s) for t, s in reads]
    for path in (members, bgz):
        assert inspect_input(str(path))[1:3] == (True, "fastq")
        assert [(i, s) for i, s, _, _ in _records([path], 64)] == expected


def test_mixed_formats_in_one_sample(tmp_path):
    fq = tmp_path / "a.fq"
    fq.write_text(_fastq([("q1", "ACGT"), ("q2", "GGCC")]))
    fa = tmp_path / "b.fa"
    fa.write_text(">f1\nAC\nGT\n")
    fqgz = tmp_path / "c.fq.gz"
    fqgz.write_bytes(gzip.compress(_fastq([("z1", "TTT")]).encode()))
    assert [(i, s) for i, s, _, _ in _records([fq, fa, fqgz], 7)] == [
        ("q1", "ACGT"),
        ("q2", "GGCC"),
        ("f1", "ACGT"),
        ("z1", "TTT"),
    ]


GOOD = "@a x\nACGT\n+\nIIII\n"
MALFORMED = {
    "quality shorter": (
        GOOD + "@b\nACGTA\n+\nIIII\n@c\nA\n+\nI\n",
        8,
        "b",
        "sequence and quality lengths differ (5 bases, 4 quality values)",
    ),
    "missing plus": (GOOD + "@b\nACGT\nACGT\n+\nIIII\n", 7, "b", "missing '+' line"),
    "truncated": (GOOD + "@b\nACGT\n+\n", 5, "b", "truncated record: 3 of its 4 lines"),
    "truncated header only": (GOOD + "@b\n", 5, "b", "truncated record: 1 of its 4 lines"),
    "fasta record": (
        GOOD + ">b\nACGT\n@c\nA\n+\nI\n",
        5,
        "b",
        "a FASTA record ('>' header) in a FASTQ file",
    ),
    "blank line": (GOOD + "\n" + GOOD, 5, None, "blank line inside FASTQ records"),
    "other plus title": (GOOD + "@b\nAC\n+c\nII\n", 7, "b", "repeats a different title"),
}


@pytest.mark.parametrize("case", MALFORMED)
@pytest.mark.parametrize("compressed", [False, True])
def test_malformed_fastq_names_file_line_and_record(tmp_path, case, compressed):
    text, line, record, problem = MALFORMED[case]
    path = tmp_path / "bad.fq"
    path.write_bytes(gzip.compress(text.encode()) if compressed else text.encode())
    for blocksize in (3, 1 << 20):
        with pytest.raises(FastqFormatError) as info:
            _records([path], blocksize)
        err = info.value
        assert (err.path, err.line, err.record) == (str(path), line, record), blocksize
        assert problem in err.problem
        assert str(err).startswith(f"{path}: line {line}: ")


def test_trailing_blank_lines_and_missing_final_newline_are_fine(tmp_path):
    path = tmp_path / "r.fq"
    path.write_text(GOOD + "@b\nAC\n+b\nII")
    assert [i for i, *_ in _records([path], 5)] == ["a", "b"]
    path.write_text(GOOD + "\n\n \n")
    assert [i for i, *_ in _records([path], 5)] == ["a"]
