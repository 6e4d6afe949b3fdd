"""Block-wise FASTA reading: same records as Biopython, correct line numbers, clear errors."""

from __future__ import annotations

import gzip
import pickle
import random
from pathlib import Path

import pytest
from Bio import SeqIO
from helpers import REFERENCE

from virnuc_dask.core.fasta import FastaFormatError, Record, record_problem
from virnuc_dask.core.formats import plan_blocks, read_block
from virnuc_dask.core.records import InputBlock

DEV_INPUTS = sorted((REFERENCE / "dev").glob("*/input.fa")) if REFERENCE.is_dir() else []
BLOCKSIZES = (100, 1000, 4096, 64 * 2**20)


def biopython(path: Path) -> list[tuple[str, str]]:
    return [(r.id, str(r.seq)) for r in SeqIO.parse(path, "fasta")]


def read_all(paths: list[Path], blocksize: int) -> list[Record]:
    return [
        rec
        for block in plan_blocks([str(p) for p in paths], blocksize)
        for rec in read_block(block)
    ]


def header_lines(path: Path) -> list[int]:
    """1-based numbers of the lines starting with '>' (universal newlines, as Biopython)."""
    with open(path, encoding="utf-8") as f:
        return [i for i, line in enumerate(f, start=1) if line.startswith(">")]


def assert_like_biopython(path: Path, blocksizes=BLOCKSIZES) -> None:
    expected = biopython(path)
    lines = header_lines(path)
    for bs in blocksizes:
        got = read_all([path], bs)
        assert [(r.id, r.sequence) for r in got] == expected, bs
        assert [r.line for r in got] == lines, bs
        assert {r.path for r in got} <= {str(path)}


@pytest.mark.parametrize("path", DEV_INPUTS, ids=lambda p: p.parent.name)
def test_reference_inputs_match_biopython(path: Path, tmp_path: Path) -> None:
    assert_like_biopython(path)
    gz = tmp_path / "input.fa.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    got = read_all([gz], 100)
    assert [(r.id, r.sequence) for r in got] == biopython(path)
    assert [r.line for r in got] == header_lines(path)


TRICKY = {
    "tabs": ">r1\tdesc with\ttabs\nACGT\nacgt\n>r2 \t x\nNNNN\n>r3\x0bvt\nAC\n",
    "crlf": ">a b\r\nACGT\r\nAC\r\n\r\n>b\r\nGG\r\n",
    "lone_cr": ">a\rAC\rGT\r>b x\rTT",
    "mixed_eol": ">a\r\nAC\nGT\r>b\n\r\nTT\r\n\n>c\r\r\n",
    "blank_lines": ">a\n\nAC\n\n\nGT\n\n>b\n\n",
    "no_final_newline": ">a\nACGT\n>b\nAAA",
    "empty_records": ">a\n>b\n\n>c desc\n>\nAC\n>d",
    "spaces_in_sequence": ">a\nAC GT\n  acgt \t\n ;x\n",
    "gt_in_header": ">a>b c>d\nAC\n>>x\nGG\n",
    "long_line": ">long\n" + "ACGTN" * 30000 + "\n>after\nAC\n",
    "unicode_header": ">r\u00e9\u00e8 d\u00e9\nACGT\n>r\u00a0x y\nAA\n",
    "formfeed": ">a\nAC\x0cGT\x0b\n>b\x0cc\nTT\n",
}


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_tricky_files_match_biopython(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.fa"
    path.write_bytes(TRICKY[name].encode("utf-8"))
    assert_like_biopython(path, blocksizes=range(1, 40) if len(TRICKY[name]) < 200 else BLOCKSIZES)
    gz = tmp_path / f"{name}.fa.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    got = read_all([gz], 5)
    assert [(r.id, r.sequence) for r in got] == biopython(path)
    assert [r.line for r in got] == header_lines(path)


def _random_fasta(rng: random.Random) -> str:
    eols = ["\n", "\r\n", "\r"]
    out = []
    for i in range(rng.randint(1, 12)):
        eol = rng.choice(eols)
        sep = rng.choice([" ", "\t", "  ", "\x0b", " \t"])
        head = f">id{i}{rng.choice(['', '.1', '|x|', ':3-9'])}"
        if rng.random() < 0.5:
            head += sep + "desc" + sep + "more"
        out.append(head + rng.choice(["", " ", "\t"]) + eol)
        for _ in range(rng.randint(0, 5)):
            line = "".join(rng.choice("ACGTacgtNRY -*\t") for _ in range(rng.randint(0, 90)))
            out.append(line + rng.choice(eols))
            if rng.random() < 0.2:
                out.append(rng.choice(eols))
    text = "".join(out)
    return text.rstrip("\r\n") if rng.random() < 0.3 else text


def test_random_files_match_biopython(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    for n in range(60):
        path = tmp_path / f"r{n}.fa"
        path.write_bytes(_random_fasta(rng).encode())
        assert_like_biopython(path, blocksizes=(1, 2, 3, 5, 17, 64, 10**6))


def test_block_indices_are_global_and_records_unique(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.fa", tmp_path / "b.fa.gz", tmp_path / "c"
    a.write_text("".join(f">a{i}\n{'ACGT' * 10}\n" for i in range(30)))
    b.write_bytes(gzip.compress(b">b1\nAC\n>b2\nGG\n"))
    c.write_text(">c1\nTT\n")  # no extension: detected by content
    blocks = plan_blocks([str(a), str(b), str(c)], blocksize=100)
    fake = tmp_path / "plain.fa.gz"  # a name is not a format
    fake.write_text(">p\nAC\n")
    assert [(r.id, r.sequence) for r in read_all([fake], 3)] == [("p", "AC")]
    assert [blk.index for blk in blocks] == list(range(len(blocks)))
    assert [blk for blk in blocks if blk.path == str(b)] == [
        InputBlock(str(b), blocks[-2].index, 0, None, 1)
    ]
    assert blocks[-1] == InputBlock(str(c), len(blocks) - 1, 0, None, 1)
    ids = [r.id for blk in blocks for r in read_block(blk)]
    assert ids == [f"a{i}" for i in range(30)] + ["b1", "b2", "c1"]
    plain = [blk for blk in blocks if blk.path == str(a)]
    assert [(blk.start, blk.stop) for blk in plain[:2]] == [(0, 100), (100, 200)]
    assert plain[-1].stop is None


def test_block_without_first_line_counts_its_prefix(tmp_path: Path) -> None:
    path = tmp_path / "x.fa"
    path.write_bytes(b">a\r\nAC\r\n>b\r\nGG\r\n>c\rTT\r")
    for start in range(len(path.read_bytes())):
        planned = [InputBlock(str(path), 0, 0, start), InputBlock(str(path), 1, start, None)]
        if start == 0:
            planned = planned[1:]
        got = [r for blk in planned for r in read_block(blk)]
        assert [(r.id, r.line) for r in got] == [("a", 1), ("b", 3), ("c", 5)], start


def test_empty_and_blank_files_give_no_records(tmp_path: Path) -> None:
    for content in (b"", b"\n\n", b" \r\n\t\n"):
        path = tmp_path / "e.fa"
        path.write_bytes(content)
        assert read_all([path], 1) == []
        path.write_bytes(gzip.compress(content))
        assert read_all([path], 1) == []


def test_leading_blank_lines_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "lead.fa"
    path.write_bytes(b"\n\r\n  \n>a x\nAC\n>b\nG\n")
    for bs in range(1, 30):
        assert [(r.id, r.sequence, r.line) for r in read_all([path], bs)] == [
            ("a", "AC", 4),
            ("b", "G", 6),
        ]


def _error(path: Path, blocksize: int = 64 * 2**20) -> FastaFormatError:
    with pytest.raises(FastaFormatError) as info:
        read_all([path], blocksize)
    return info.value


@pytest.mark.parametrize(
    "content, line",
    [
        (b"hello\n>a\nAC\n", 1),
        (b"\n\n  some text\n>a\nAC\n", 3),
        (b"ACGT\nACGT\n", 1),
        (b"  >a\nAC\n", 1),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 1),
    ],
)
def test_not_fasta(tmp_path: Path, content: bytes, line: int) -> None:
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    err = _error(path)
    assert err.path == str(path) and err.line == line and err.record is None
    assert err.problem.startswith("not FASTA")
    assert str(err).startswith(f"{path}: line {line}: not FASTA")
    # the first block alone finds it too, even when the bad text lies past its end
    path.write_bytes(b"\n" * 150 + content)
    with pytest.raises(FastaFormatError, match="not FASTA"):
        read_block(InputBlock(str(path), 0, 0, 100, 1))
    path.write_bytes(gzip.compress(content))
    assert _error(path).problem.startswith("not FASTA")


@pytest.mark.parametrize(
    "content, line, record, problem",
    [
        (b">a\nAC\n>b\nAC\x00GT\n", 4, "b", "NUL"),
        (b">a\nAC\n>b\nAC\n\xff\xfeGT\n", 5, "b", "UTF-8"),
        (b">a\nAC\n>b\xc3 x\nAC\n", 3, "b\ufffd", "UTF-8"),
    ],
)
def test_binary_or_undecodable(tmp_path: Path, content, line, record, problem) -> None:
    path = tmp_path / "bin.fa"
    path.write_bytes(content)
    for bs in (3, 1000):
        err = _error(path, bs)
        assert (err.line, err.record) == (line, record) and problem in err.problem
        assert str(err).startswith(f"{path}: line {line}: record '{record}': ")


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(b">r%d\n%s\n" % (i, b"ACGT" * 50) for i in range(2000)))
    truncated = tmp_path / "trunc.fa.gz"
    truncated.write_bytes(data[: len(data) // 2])
    blocks = plan_blocks([str(truncated)])
    with pytest.raises(FastaFormatError, match="corrupt or truncated gzip") as info:
        read_block(blocks[0])
    assert info.value.path == str(truncated)
    garbled = tmp_path / "garbled.fa.gz"
    garbled.write_bytes(data[:20] + bytes(b ^ 0x5A for b in data[20:200]) + data[200:])
    with pytest.raises(FastaFormatError, match="gzip"):
        read_all([garbled], 10)
    header_only = tmp_path / "magic.fa"
    header_only.write_bytes(b"\x1f\x8b\x08")
    with pytest.raises(FastaFormatError, match="gzip"):
        plan_blocks([str(header_only)])


def test_missing_directory_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        plan_blocks([str(tmp_path / "nope.fa")])
    assert info.value.filename == str(tmp_path / "nope.fa")
    with pytest.raises(FastaFormatError, match="directory"):
        plan_blocks([str(tmp_path)])
    with pytest.raises(TypeError):
        plan_blocks(str(tmp_path / "x.fa"))
    with pytest.raises(ValueError):
        plan_blocks([], blocksize=0)
    assert plan_blocks([]) == []


def test_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(FastaFormatError("in.fa", 7, "r1", "boom")))
    assert (err.path, err.line, err.record, err.problem) == ("in.fa", 7, "r1", "boom")
    assert str(err) == "in.fa: line 7: record 'r1': boom"
    rec = Record("r", "AC", "in.fa", 1)
    assert pickle.loads(pickle.dumps(rec)) == rec


@pytest.mark.parametrize(
    "sequence, problem",
    [
        ("ACGTUNRYKMSWBDHVacgtunrykmswbdhv", None),
        ("A", None),
        ("", "empty sequence"),
        ("ACXGT1X", "contains characters that are not IUPAC nucleotide codes: 'X','1'"),
        ("AC-*.", "contains characters that are not IUPAC nucleotide codes: '-','*','.'"),
        ("A\u00e9C", "contains characters that are not IUPAC nucleotide codes: '\u00e9'"),
        (
            "ACEFIJLOPQ",
            "contains characters that are not IUPAC nucleotide codes: "
            "'E','F','I','J','L',... (8 distinct)",
        ),
    ],
)
def test_record_problem(sequence: str, problem: str | None) -> None:
    assert record_problem(Record("r", sequence, "in.fa", 1)) == problem
