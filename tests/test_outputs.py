"""Result files: formats, failed records, and replacement only when complete."""

from __future__ import annotations

import numpy as np
import pytest

from virnuc_dask.core.fasta import Record
from virnuc_dask.core.orfs import orfs_from_records
from virnuc_dask.dataflow.outputs import (
    FAILED,
    HIGHEST,
    PREDICTIONS,
    READS,
    assemble,
    remove_results,
    write_block,
)

RECORDS = [
    Record("r1", "ATGAAACCC", "in.fa", 1),  # 5 ORFs, one chunk
    Record("bad", "ACGT!", "in.fa", 3),
    Record("r2", "ATGAAACCCGGG", "in.fa", 5),
    Record("r3", "AC", "in.fa", 7),  # too short for an ORF
]


def table_and_scores():
    table = orfs_from_records(RECORDS, chunk_size=300)
    n = len(table.orfs)
    virus = np.linspace(0.1, 0.9, n, dtype=np.float32)
    return table, np.stack([1 - virus, virus], axis=1).astype(np.float32)


def lines(path):
    return path.read_text().splitlines()


def test_scores_are_written_as_float32_text(tmp_path):
    table, scores = table_and_scores()
    write_block(table, scores, tmp_path)
    rows = [line.split("\t") for line in lines(tmp_path / f"{PREDICTIONS}.0000000")]
    assert [r[0] for r in rows] == [o.id for o in table.orfs]
    for (s1, s2), row in zip(scores, rows, strict=True):
        assert row[2:] == [str(s1), str(s2)]  # "0.1", not "0.10000000149011612"
    assert rows[0][2:] == ["0.9", "0.1"]


def test_failed_orfs_are_listed_instead_of_scored(tmp_path):
    table, scores = table_and_scores()
    ids = [o.id for o in table.orfs]
    r1 = [i for i, orf_id in enumerate(ids) if orf_id.startswith("r1_")]
    r2 = [i for i, orf_id in enumerate(ids) if orf_id.startswith("r2_")]
    failed = {r1[0]: ("dnabert", "IndexError: index out of range in self")}
    failed.update({i: ("esm", "SequenceTooLarge: too long") for i in r2})
    counts = write_block(table, scores, tmp_path, failed)

    predicted = [line.split("\t")[0] for line in lines(tmp_path / f"{PREDICTIONS}.0000000")]
    assert predicted == [ids[i] for i in r1[1:]]
    assert lines(tmp_path / f"{FAILED}.0000000") == [  # in input order
        f"{ids[r1[0]]}\tdnabert\tIndexError: index out of range in self",
        "bad\tread\tcontains characters that are not IUPAC nucleotide codes: '!' (in.fa, line 3)",
        *(f"{ids[i]}\tesm\tSequenceTooLarge: too long" for i in r2),
    ]
    reads = {row.split("\t")[0]: row.split("\t") for row in lines(tmp_path / f"{READS}.0000000")}
    # r1 is judged on its other ORFs; r2 lost all of them; r3 never had one.
    best = max(scores[i][1] for i in r1[1:])
    viral = best >= max(scores[i][0] for i in r1[1:])
    assert reads["r1"] == [
        "r1",
        "9",
        "1",
        "1",
        "5",
        str(int(viral)),
        str(best),
        "virus" if viral else "others",
    ]
    assert reads["r2"][5:] == ["0", "NA", "failed"]
    assert reads["bad"][-1] == "failed"
    assert reads["r3"][-1] == "no_orf"
    assert lines(tmp_path / f"{HIGHEST}.0000000") == [f"r1_chunk_1\t{viral}"]
    assert (counts.failed, counts.orfs_failed, counts.reads_failed, counts.reads_no_orf) == (
        1 + len(failed),
        len(failed),
        2,
        1,
    )


def test_assemble_replaces_the_results_only_when_all_are_complete(tmp_path):
    table, scores = table_and_scores()
    out, parts = tmp_path / "out", tmp_path / "parts"
    out.mkdir()
    parts.mkdir()
    write_block(table, scores, parts)
    assemble(parts, out, 1, [("empty.fa", "input", "holds no FASTA record (empty file)")])
    first = {name: (out / name).read_bytes() for name in (PREDICTIONS, HIGHEST, READS, FAILED)}
    assert lines(out / FAILED)[:2] == [
        "id\tstage\terror",
        "empty.fa\tinput\tholds no FASTA record (empty file)",
    ]
    assert first[PREDICTIONS].startswith(b"Sequence_ID\tPrediction\tscore1\tscore2\n")

    # A second run whose last part file is missing (say, it could not be written): nothing
    # of it reaches the output directory.
    write_block(table, scores * 0.5, parts)
    (parts / f"{HIGHEST}.0000000").unlink()
    with pytest.raises(FileNotFoundError):
        assemble(parts, out, 1)
    assert {name: (out / name).read_bytes() for name in first} == first
    assert sorted(p.name for p in out.iterdir()) == sorted(first)


def test_remove_results(tmp_path):
    for name in (PREDICTIONS, HIGHEST, READS, FAILED, "run_summary.json", "keep.txt"):
        (tmp_path / name).write_text("x")
    remove_results(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
