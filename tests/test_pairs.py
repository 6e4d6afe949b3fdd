"""Paired-end reads: mates recognised, named ``<id>/1`` and ``<id>/2``, checked to be in
the same order in both files, and judged as pairs in ``pair_predictions.tsv``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_settings, write_mates

from virnuc_dask.core.formats import plan_blocks, read_block
from virnuc_dask.core.pairs import (
    check_mates_so_far,
    mate_layout,
    mate_pairs,
    pair_hashes,
    title_mate,
    with_mates,
)
from virnuc_dask.dataflow.pair_outputs import pair_row
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.errors import InputFormatError


def _run(client, inputs, out: Path, **extra):
    settings = tiny_settings(inputs, out, blocksize=1024, partition_rows=37, **extra)
    return predict(settings, client)


def _table(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("M1:45:FC:1:1101:15589:1332 1:N:0:ATCACG", ("M1:45:FC:1:1101:15589:1332", 1)),
        ("M1:45:FC:1:1101:15589:1332 2:Y:18:1", ("M1:45:FC:1:1101:15589:1332", 2)),
        ("read7/2", ("read7", 2)),
        ("read7/1 some comment", ("read7", 1)),
        ("read7/3", ("read7/3", None)),
        ("contig 1:x", ("contig", None)),
        ("", ("", None)),
    ],
)
def test_a_title_gives_its_pair_id_and_mate(title, expected):
    assert title_mate(title) == expected


def test_consecutive_mate_files_are_pairs(tmp_path):
    c1, c2 = write_mates(tmp_path / "c_R1.fq.gz", tmp_path / "c_R2.fq.gz")
    s1, s2 = write_mates(tmp_path / "s_R1.fq", tmp_path / "s_R2.fq", style="slash", offset=5)
    single = tmp_path / "single.fq"
    single.write_text("@r1\nACGT\n+\nFFFF\n")
    fasta = tmp_path / "a.fa"
    fasta.write_text(">r1\nACGT\n")
    layout = mate_layout([str(p) for p in (single, c1, c2, s1, s2, fasta)])
    assert layout == [None, 1, 2, 1, 2, None]
    # Mate 2 first, two files of mate 1, or mates of different reads: no pair.
    assert mate_layout([str(c2), str(c1)]) == [None, None]
    assert mate_layout([str(c1), str(c1)]) == [None, None]
    assert mate_layout([str(c1), str(s2)]) == [None, None]


def test_mates_are_checked_on_the_blocks_read_so_far_in_any_order(tmp_path):
    """Blocks are read in parallel: a mate file's later block may be read before its
    first. Only the reads each file gives from its start on are compared."""
    r1, r2 = write_mates(tmp_path / "x_R1.fq", tmp_path / "x_R2.fq", n=40)
    layout = mate_layout([str(r1), str(r2)])
    blocks = with_mates(plan_blocks([str(r1), str(r2)], 1024), layout)
    hashes = {
        b: pair_hashes([r.id for r in read_block(block)], block.mate)
        for b, block in enumerate(blocks)
    }
    second = [b for b, block in enumerate(blocks) if block.mate == 2]
    assert len(second) >= 3
    pairs = mate_pairs(layout)
    # mate 2's first block not read yet, its next ones are: nothing to compare yet
    read = {b: h for b, h in hashes.items() if b != second[0]}
    check_mates_so_far(blocks, read, pairs)
    check_mates_so_far(blocks, hashes, pairs)
    # a real mismatch within what both files have given is still found
    wrong = dict(hashes)
    wrong[second[0]] = wrong[second[0]][::-1].copy()
    with pytest.raises(InputFormatError, match="mates out of order"):
        check_mates_so_far(blocks, wrong, pairs)


def test_a_pair_is_judged_over_both_mates_chunks():
    one = "r/1\t600\t2\t2\t8\t2\t0.9\tvirus\n"
    two = "r/2\t600\t2\t2\t7\t0\t0.4\tothers\n"
    row, call = pair_row(one, two)
    assert call == "virus"  # 2 of 4 chunks: at least half
    assert row == "r\t600\t600\t4\t4\t15\t2\t0.9\tvirus\tvirus\tothers\n"
    three = "r/2\t600\t3\t3\t9\t0\t0.95\tothers\n"
    assert pair_row(one, three)[1] == "others"  # 2 of 5
    assert pair_row(one, three)[0].split("\t")[7] == "0.95"
    none = "r/2\t2\t1\t0\t0\t0\tNA\tno_orf\n"
    assert pair_row("r/1\t2\t1\t0\t0\t0\tNA\tno_orf\n", none)[1] == "no_orf"
    assert pair_row("r/1\t2\t0\t0\t0\t0\tNA\tfailed\n", none)[1] == "failed"
    assert pair_row(one, none)[1] == "virus"
    with pytest.raises(ValueError, match="not mates"):
        pair_row(one, "q/2\t600\t2\t2\t7\t0\t0.4\tothers\n")


@pytest.mark.parametrize("style", ["casava", "slash"])
def test_both_mates_are_classified_as_each_file_alone(client, tmp_path, style):
    r1, r2 = write_mates(tmp_path / "R1.fastq.gz", tmp_path / "R2.fastq.gz", style=style)
    paired = _run(client, [r1, r2], tmp_path / "pair")
    assert paired.exit_code == 0
    assert paired.summary["pairs"]["pairs"] == 20
    assert _table(tmp_path / "pair" / "failed_records.tsv") == [["id", "stage", "error"]]
    reads = _table(tmp_path / "pair" / "read_predictions.tsv")[1:]
    assert len(reads) == 40
    orfs = _table(tmp_path / "pair" / "prediction_results.txt")[1:]
    for mate, path in ((1, r1), (2, r2)):
        alone = _run(client, [path], tmp_path / f"alone{mate}")
        assert alone.exit_code == 0
        base = {"casava": "", "slash": f"/{mate}"}[style]
        mine = [r for r in reads if r[0].endswith(f"/{mate}")]
        single = _table(tmp_path / f"alone{mate}" / "read_predictions.tsv")[1:]
        assert [r[0] for r in mine] == [r[0][: len(r[0]) - len(base)] + f"/{mate}" for r in single]
        assert [r[1:6] + r[7:] for r in mine] == [r[1:6] + r[7:] for r in single]
        single_orfs = _table(tmp_path / f"alone{mate}" / "prediction_results.txt")[1:]
        mine_orfs = [r for r in orfs if f"/{mate}_chunk_" in r[0]]
        assert len(mine_orfs) == len(single_orfs)
        assert [r[1] for r in mine_orfs] == [r[1] for r in single_orfs]
        got = np.array([[float(x) for x in r[2:]] for r in mine_orfs])
        want = np.array([[float(x) for x in r[2:]] for r in single_orfs])
        assert np.abs(got - want).max() <= 1e-5

    pairs = _table(tmp_path / "pair" / "pair_predictions.tsv")
    assert pairs[0][:2] == ["pair_id", "length_1"]
    assert len(pairs) == 21
    by_id = {r[0]: r for r in reads}
    for row in pairs[1:]:
        one, two = by_id[row[0] + "/1"], by_id[row[0] + "/2"]
        assert row[9:] == [one[7], two[7]]
        assert int(row[6]) == int(one[5]) + int(two[5])


def _swap_records(path: Path, a: int, b: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    recs = [lines[i : i + 4] for i in range(0, len(lines), 4)]
    recs[a], recs[b] = recs[b], recs[a]
    path.write_text("".join(sum(recs, [])))


def test_mates_out_of_order_stop_the_run_naming_file_line_and_record(client, tmp_path):
    r1, r2 = write_mates(tmp_path / "R1.fq", tmp_path / "R2.fq")
    out = tmp_path / "out"
    assert _run(client, [r1, r2], out).exit_code == 0
    before = (out / "read_predictions.tsv").read_text()
    _swap_records(r2, 3, 4)
    with pytest.raises(InputFormatError) as err:
        _run(client, [r1, r2], out)
    assert err.value.path == str(r2)
    assert err.value.line == 13  # the 4th record
    assert err.value.record == "M00123:45:000000000-A1B2C:1:1101:15593:1332"
    assert "mates out of order" in str(err.value)
    assert (out / "read_predictions.tsv").read_text() == before  # nothing finished lost


def test_mate_files_with_different_read_counts_name_the_read_without_mate(client, tmp_path):
    r1, r2 = write_mates(tmp_path / "R1.fq", tmp_path / "R2.fq", n=6)
    r2.write_text("".join(r2.read_text().splitlines(keepends=True)[:-4]))
    with pytest.raises(InputFormatError) as err:
        _run(client, [r1, r2], tmp_path / "out")
    assert (err.value.path, err.value.line) == (str(r1), 21)
    assert f"{r2} ends after 5 reads" in str(err.value)


def _slow_reads(chunk_id: str, sequence: str):
    """Every ORF of a chunk, after a pause: reading takes longer than embedding (large
    compressed files beside a GPU)."""
    import time

    from virnuc_dask.core.translate import six_frame_orfs

    time.sleep(0.03)
    return six_frame_orfs(chunk_id, sequence)


def test_mates_out_of_order_in_the_first_block_stop_the_run_before_it_embeds(client, tmp_path):
    """The first block of the second mate file is read right after the first file's
    first block and checked as soon as it is read: a wrong pairing stops the run before
    the first file's partitions are embedded, not after the whole first file."""
    from virnuc_dask.dataflow.models_on_workers import load_models
    from virnuc_dask.dataflow.pipeline import embedding_scratch
    from virnuc_dask.dataflow.streaming import embed_inputs
    from virnuc_dask.events import reporter

    r1, r2 = write_mates(tmp_path / "R1.fq", tmp_path / "R2.fq", n=120)
    _swap_records(r2, 1, 2)  # the first block differs (two records per block here)
    settings = tiny_settings([r1, r2], tmp_path / "out", blocksize=1024, partition_rows=8)
    events = []
    facts = load_models(settings, client)
    with embedding_scratch(settings) as root, pytest.raises(InputFormatError, match="order"):
        embed_inputs(
            settings,
            client,
            root=root,
            tick=reporter(events.append),
            timings={},
            select=_slow_reads,
            facts=facts,
        )
    read = max([e.done for e in events if e.stage == "read"] or [0])
    blocks = max([e.total for e in events if e.stage == "read"] or [0])
    assert blocks > 20 and read <= 4, (read, blocks)


def test_mate_files_given_out_of_order_stop_before_any_work(client, tmp_path):
    """R1 and R2 whose first reads say mate 1 and mate 2 but are not mates (swapped
    lines, two samples' files): an error naming R2's first record, not two single-end
    files whose mate-2 reads would all be dropped as duplicate read ids."""
    r1, r2 = write_mates(tmp_path / "R1.fq", tmp_path / "R2.fq")
    _swap_records(r2, 0, 1)
    out = tmp_path / "out"
    with pytest.raises(InputFormatError) as err:
        _run(client, [r1, r2], out)
    assert (err.value.path, err.value.line) == (str(r2), 1)
    assert err.value.record == "M00123:45:000000000-A1B2C:1:1101:15590:1332"
    assert "not the mate of the first read of" in str(err.value) and str(r1) in str(err.value)
    assert not (out / "embeddings.zarr").exists()  # nothing was started


def test_validate_reports_mate_files_given_out_of_order(tmp_path):
    from virnuc_dask.validate.inputs import validate

    r1, r2 = write_mates(tmp_path / "R1.fq", tmp_path / "R2.fq")
    _swap_records(r2, 0, 1)
    files, _ = validate(
        [str(r1), str(r2)], tiny_settings([r1, r2], tmp_path / "out"), with_estimate=False
    )
    errors = [f for f in files[1].findings if f.kind == "error"]
    assert errors and errors[0].line == 1 and "not the mate of the first read" in errors[0].message
    assert not [f for f in files[0].findings if f.kind == "error"]
