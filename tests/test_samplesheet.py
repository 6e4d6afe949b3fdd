"""The samplesheet: nf-core columns, lanes in row order, paths relative to the sheet,
and every problem the sheet alone shows named with its line, before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import write_mates, write_sequencing_run

from virnuc_dask.core.samplesheet import read_samplesheet
from virnuc_dask.errors import SampleSheetError


@pytest.fixture
def run_dir(tmp_path) -> Path:
    write_sequencing_run(tmp_path / "run")
    return tmp_path / "run"


def test_a_sheet_gives_its_samples_lanes_in_row_order(run_dir):
    sheet = read_samplesheet(run_dir / "samples.csv")
    assert [(s.name, s.kind, s.line) for s in sheet] == [
        ("casava", "paired", 2),
        ("slash", "paired", 4),
        ("single", "single", 5),
        ("contigs", "fasta", 6),
    ]
    casava = sheet.samples[0]
    assert [Path(f).name for f in casava.inputs] == [
        "casava_L001_R1_001.fastq.gz",
        "casava_L001_R2_001.fastq.gz",
        "casava_L002_R1_001.fastq.gz",
        "casava_L002_R2_001.fastq.gz",
    ]
    assert all(Path(f).is_absolute() and Path(f).parent == run_dir for f in casava.inputs)


def test_columns_may_come_in_any_order_and_fasta_may_be_left_out(run_dir):
    (run_dir / "b.csv").write_text("fastq_2,sample,fastq_1\nslash_2.fq,S,slash_1.fq\n")
    (sample,) = read_samplesheet(run_dir / "b.csv")
    assert [Path(f).name for f in sample.inputs] == ["slash_1.fq", "slash_2.fq"]
    (run_dir / "c.csv").write_text("sample,fasta\n\nC,contigs.fa\n")
    assert read_samplesheet(run_dir / "c.csv").samples[0].kind == "fasta"


BAD_ROWS = {
    "S 1,single.fq,,": "sample name 'S 1': use letters, digits and '._-' only",
    "S/1,single.fq,,": "sample name 'S/1'",
    "..,single.fq,,": "sample name '..'",
    ",single.fq,,": "empty sample name",
    "S,slash_1.fq,,": "fastq_1 'slash_1.fq' is named twice (also line 2, fastq_1)",
    "S,missing_R1.fq,,": "fastq_1 'missing_R1.fq': file not found",
    "S,,slash_2.fq,": "fastq_2 given without fastq_1",
    "S,single.fq,,contigs.fa": "fasta and fastq_1/fastq_2 on one row",
    "S,,,": "sample 'S' names no file",
    "S,contigs.fa,,": "fastq_1 'contigs.fa' holds FASTA, not FASTQ: put it in the fasta column",
    "S,,,single.fq": "fasta 'single.fq' holds FASTQ, not FASTA",
    "S,single.fq,other.fq,": "are not mates of one pair",
    "slash,single.fq,,": "sample 'slash' mixes single-end FASTQ (this line) and paired-end "
    "FASTQ (line 2)",
    "S,single.fq,": "3 fields, the header has 4",
}


@pytest.mark.parametrize("row", list(BAD_ROWS))
def test_a_bad_row_is_named_with_its_line(run_dir, row):
    (run_dir / "other.fq").write_text("@x\nACGT\n+\nFFFF\n")
    sheet = run_dir / "bad.csv"
    sheet.write_text(f"sample,fastq_1,fastq_2,fasta\nslash,slash_1.fq,slash_2.fq,\n\n{row}\n")
    with pytest.raises(SampleSheetError) as err:
        read_samplesheet(sheet)
    assert err.value.line == 4
    assert BAD_ROWS[row] in str(err.value)
    assert str(err.value).startswith(f"{sheet}: line 4: ")


def test_swapped_mate_columns_are_named(run_dir):
    sheet = run_dir / "swapped.csv"
    sheet.write_text("sample,fastq_1,fastq_2\nS,slash_2.fq,slash_1.fq\n")
    with pytest.raises(SampleSheetError, match="line 2: the first reads of fastq_1"):
        read_samplesheet(sheet)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", None, "empty: expected a header line"),
        ("sample,fastq_1,lane\n", 1, "unknown column(s) 'lane' in the header"),
        ("S1,single.fq\n", 1, "unknown column(s) 'S1', 'single.fq'"),
        ("sample,fastq_2\n", 1, "the header needs the columns sample and fastq_1"),
        ("sample,fastq_1,fastq_1\n", 1, "column(s) fastq_1 named twice"),
        ("sample,fastq_1,fastq_2\n", None, "no sample"),
    ],
)
def test_a_bad_header_is_named(run_dir, text, line, message):
    sheet = run_dir / "bad.csv"
    sheet.write_text(text)
    with pytest.raises(SampleSheetError) as err:
        read_samplesheet(sheet)
    assert err.value.line == line
    assert message in str(err.value)


def test_a_missing_sheet_and_absolute_paths(run_dir, tmp_path):
    with pytest.raises(SampleSheetError, match="samplesheet not found"):
        read_samplesheet(tmp_path / "nowhere.csv")
    elsewhere = tmp_path / "sheets"
    elsewhere.mkdir()
    r1, r2 = write_mates(tmp_path / "a_R1.fq", tmp_path / "a_R2.fq")
    shutil.copy(run_dir / "single.fq", elsewhere / "single.fq")
    sheet = elsewhere / "s.csv"
    sheet.write_text(f"sample,fastq_1,fastq_2\nA,{r1},{r2}\nB,single.fq,\n")
    a, b = read_samplesheet(sheet)
    assert a.inputs == (str(r1), str(r2))
    assert b.inputs == (str(elsewhere / "single.fq"),)


def _validate(capsys, *argv: str) -> tuple[int, str]:
    from virnuc_dask.cli.main import main

    code = main(["validate", "--no-estimate", "--length", "300", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_validate_reports_per_sample(run_dir, capsys, tmp_path):
    code, out = _validate(
        capsys, "--samplesheet", str(run_dir / "samples.csv"), "--json", str(tmp_path / "v.json")
    )
    assert code == 0, out
    assert "sample casava (sheet line 2; paired, 2 lanes): 80 reads, 40 pairs: ok" in out
    assert "sample slash (sheet line 4; paired, 1 lane): 24 reads, 12 pairs: ok" in out
    assert "sample single (sheet line 5; single, 1 lane): 14 reads: ok" in out
    assert "sample contigs (sheet line 6; fasta, 1 lane): 14 reads: ok" in out
    assert "duplicate read id" not in out
    import json

    doc = json.loads((tmp_path / "v.json").read_text())
    assert [s["sample"] for s in doc["samples"]] == ["casava", "slash", "single", "contigs"]


def test_validate_finds_mates_out_of_order_and_a_bad_sheet_line(run_dir, capsys):
    lines = (run_dir / "slash_2.fq").read_text().splitlines(keepends=True)
    (run_dir / "slash_2.fq").write_text(
        "".join(lines[:8] + lines[12:16] + lines[8:12] + lines[16:])
    )
    code, out = _validate(capsys, "--samplesheet", str(run_dir / "samples.csv"))
    assert code == 1
    assert "sample slash (sheet line 4; paired, 1 lane): 24 reads, 12 pairs: ERROR" in out
    assert (
        "slash_2.fq: line 9: record 'M00123:45:000000000-A1B2C:1:1101:15632:1332/2': error: "
        "mates out of order: read 3 is not the mate of read 3" in out
    )
    (run_dir / "bad.csv").write_text("sample,fastq_1\nS 1,single.fq\n")
    code, out = _validate(capsys, "--samplesheet", str(run_dir / "bad.csv"))
    assert code == 1
    assert "bad.csv: line 2: sample name 'S 1'" in out


def test_validate_of_two_mate_files_sees_pairs(run_dir, capsys):
    r1, r2 = run_dir / "casava_L001_R1_001.fastq.gz", run_dir / "casava_L001_R2_001.fastq.gz"
    code, out = _validate(capsys, str(r1), str(r2))
    assert code == 0, out
    assert "duplicate read id" not in out


def test_a_mapping_of_samples_is_checked_as_a_sheet(run_dir):
    from virnuc_dask.core.samplesheet import samples_from_files

    sheet = samples_from_files(
        {
            "casava": [
                run_dir / "casava_L001_R1_001.fastq.gz",
                run_dir / "casava_L001_R2_001.fastq.gz",
                run_dir / "casava_L002_R1_001.fastq.gz",
                run_dir / "casava_L002_R2_001.fastq.gz",
            ],
            "single": [run_dir / "single.fq"],
            "contigs": [run_dir / "contigs.fa"],
        }
    )
    assert [(s.name, s.kind, len(s.lanes)) for s in sheet] == [
        ("casava", "paired", 2),
        ("single", "single", 1),
        ("contigs", "fasta", 1),
    ]
    with pytest.raises(SampleSheetError, match=r"^samples\['bad name'\]: sample name"):
        samples_from_files({"ok": [run_dir / "single.fq"], "bad name": [run_dir / "contigs.fa"]})
    with pytest.raises(SampleSheetError, match=r"^samples\['b'\]: fastq_1 .* is named twice"):
        samples_from_files({"a": [run_dir / "single.fq"], "b": [run_dir / "single.fq"]})
