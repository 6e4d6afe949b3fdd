"""A sequencing run: every sample of a sheet on one cluster, outputs per sample equal to
a one-sample run, the run's tables, resume per sample."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from helpers import TINY, write_sequencing_run

from virnuc_dask.config import load_settings
from virnuc_dask.core.samplesheet import read_samplesheet
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.dataflow.sequencing_run import predict_samples, sample_settings

RESULTS = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "read_predictions.tsv",
    "failed_records.tsv",
)
OVERRIDES = {"length": 300, "precision": "fp32", "blocksize": 2048, "partition_rows": 37, **TINY}


def _settings(out: Path, inputs=()):
    return load_settings(inputs=[str(p) for p in inputs], overrides={"out": str(out), **OVERRIDES})


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def assert_same_results(got: Path, want: Path) -> None:
    for name in (*RESULTS, "pair_predictions.tsv"):
        if not (want / name).exists():
            assert not (got / name).exists(), name
            continue
        a, b = _rows(got / name), _rows(want / name)
        assert len(a) == len(b), name
        for ra, rb in zip(a, b, strict=True):
            assert len(ra) == len(rb), name
            for x, y in zip(ra, rb, strict=True):
                try:
                    fx, fy = float(x), float(y)
                except ValueError:
                    assert x == y, (name, ra, rb)
                else:
                    assert abs(fx - fy) <= 1e-5, (name, ra, rb)


@pytest.fixture(scope="module")
def sheet_run(client, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seqrun")
    sheet = read_samplesheet(write_sequencing_run(folder / "in"))
    result = predict_samples(_settings(folder / "RUN"), client, sheet=sheet)
    return folder, sheet, result


def test_every_sample_equals_its_one_sample_run(client, sheet_run):
    folder, sheet, result = sheet_run
    assert result.exit_code == 0
    for sample in sheet:
        alone = predict(sample_settings(_settings(folder / "alone"), sample), client)
        assert alone.exit_code == 0
        assert_same_results(folder / "RUN" / sample.name, folder / "alone" / sample.name)
        kept = json.loads((folder / "RUN" / sample.name / "run_summary.json").read_text())
        assert kept["counts"] == alone.summary["counts"]
    pairs = _rows(folder / "RUN" / "casava" / "pair_predictions.tsv")
    assert len(pairs) == 41  # two lanes of 20 pairs
    assert not (folder / "RUN" / "single" / "pair_predictions.tsv").exists()


def test_the_run_tables_parse_with_the_right_counts(sheet_run):
    folder, sheet, result = sheet_run
    run = folder / "RUN"
    with open(run / "samples.tsv") as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["sample"] for r in table] == ["casava", "slash", "single", "contigs"]
    by = {r["sample"]: r for r in table}
    assert [by[s]["reads"] for s in by] == ["80", "24", "14", "14"]
    assert by["casava"]["pairs"] == "40" and by["single"]["pairs"] == "NA"
    assert {r["status"] for r in table} == {"complete"}
    for name, row in by.items():
        reads = _rows(run / name / "read_predictions.tsv")[1:]
        viral = sum(r[7] == "virus" for r in reads)
        assert int(row["viral_reads"]) == viral
        assert float(row["viral_fraction"]) == pytest.approx(viral / len(reads), rel=1e-5)
        assert int(row["no_orf_reads"]) == sum(r[7] == "no_orf" for r in reads)
    pairs = _rows(run / "casava" / "pair_predictions.tsv")[1:]
    assert int(by["casava"]["viral_pairs"]) == sum(r[8] == "virus" for r in pairs)

    text = (run / "virnuc_dask_mqc.tsv").read_text()
    header = yaml.safe_load("\n".join(line[2:] for line in text.splitlines() if line[:1] == "#"))
    assert header["plot_type"] == "generalstats"
    assert [next(iter(c)) for c in header["pconfig"]][:2] == ["viral_percent", "viral_reads"]
    body = [line.split("\t") for line in text.splitlines() if line[:1] != "#"]
    assert body[0][0] == "Sample" and [r[0] for r in body[1:]] == list(by)
    for r in body[1:]:
        assert float(r[1]) == pytest.approx(100 * float(by[r[0]]["viral_fraction"]), abs=1e-3)

    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["exit_code"] == 0
    assert summary["totals"]["reads"] == 132
    assert [s["sample"] for s in summary["samples"]] == list(by)
    # The devices over the whole run: every partition of every sample, one worker.
    (worker,) = summary["workers"].values()
    assert worker["partitions"] == sum(s["partitions"] for s in summary["samples"])
    assert 0 < worker["device_busy"] <= 1


def test_an_added_sample_is_the_only_one_computed(client, sheet_run, tmp_path):
    folder, sheet, _ = sheet_run
    run = tmp_path / "RUN"
    shutil.copytree(folder / "RUN", run)
    text = Path(sheet.path).read_text()
    extra = Path(sheet.path).parent / "more.csv"
    extra.write_text(text + "fifth,single.fq.gz,,\n")
    src = Path(sheet.path).parent
    data = (src / "single.fq").read_text().replace("@single_", "@fifth_")
    import gzip

    (src / "single.fq.gz").write_bytes(gzip.compress(data.encode(), mtime=0))
    bigger = read_samplesheet(extra)
    result = predict_samples(_settings(run), client, sheet=bigger)
    assert result.exit_code == 0
    reused = {
        s["sample"]: (s["partitions_reused"], s["partitions"]) for s in result.summary["samples"]
    }
    for name in ("casava", "slash", "single", "contigs"):
        assert reused[name][0] == reused[name][1] > 0, name
        kept = json.loads((run / name / "run_summary.json").read_text())["partitions"]
        assert kept["computed"] == 0 and kept["reused"] == kept["total"], name
        assert_same_results(run / name, folder / "RUN" / name)
    assert reused["fifth"][0] == 0 < reused["fifth"][1]
    (src / "single.fq.gz").unlink()
    extra.unlink()


def test_a_sample_with_bad_mates_fails_alone(client, tmp_path):
    sheet_path = write_sequencing_run(tmp_path / "in")
    lines = (tmp_path / "in" / "slash_2.fq").read_text().splitlines(keepends=True)
    (tmp_path / "in" / "slash_2.fq").write_text("".join(lines[:-4]))
    sheet = read_samplesheet(sheet_path)
    result = predict_samples(_settings(tmp_path / "RUN"), client, sheet=sheet)
    assert result.exit_code == 1
    with open(tmp_path / "RUN" / "samples.tsv") as fh:
        rows = {r["sample"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert rows["slash"]["status"] == "failed"
    assert "slash_1.fq: line 45" in rows["slash"]["error"] and "no mate" in rows["slash"]["error"]
    assert {rows[s]["status"] for s in ("casava", "single", "contigs")} == {"complete"}
    assert (tmp_path / "RUN" / "casava" / "read_predictions.tsv").exists()
    mqc = (tmp_path / "RUN" / "virnuc_dask_mqc.tsv").read_text()
    assert "\nslash\t" not in mqc


def _cli(client, capsys, *argv: str) -> tuple[int, str]:
    from helpers import model_flags

    from virnuc_dask.cli.main import main

    address = client.scheduler.address
    code = main(["predict", *argv, *model_flags(300), "--scheduler", address, "-q"])
    captured = capsys.readouterr()
    return code, captured.err


def _digests(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_command_line_runs_a_sheet_and_refuses_a_bad_one(client, sheet_run, tmp_path, capsys):
    folder, sheet, _ = sheet_run
    run = tmp_path / "RUN"
    code, err = _cli(client, capsys, "--samplesheet", sheet.path, "--out", str(run))
    assert code == 0, err
    for sample in sheet:
        assert_same_results(run / sample.name, folder / "RUN" / sample.name)
    before = _digests(run)
    bad = Path(sheet.path).parent / "bad.csv"
    bad.write_text(Path(sheet.path).read_text() + "S 6,single.fq,,\n")
    code, err = _cli(client, capsys, "--samplesheet", str(bad), "--out", str(run))
    assert code == 1
    assert f"{bad}: line 7: sample name 'S 6'" in err
    assert "Traceback" not in err
    assert _digests(run) == before
    code, err = _cli(client, capsys, "--out", str(run))
    assert code == 1 and "give INPUT files or --samplesheet CSV" in err
    bad.unlink()


def test_predict_r1_r2_classifies_both_mates(client, sheet_run, tmp_path, capsys):
    folder, _, _ = sheet_run
    r1, r2 = folder / "in" / "slash_1.fq", folder / "in" / "slash_2.fq"
    code, err = _cli(client, capsys, str(r1), str(r2), "--out", str(tmp_path / "out"))
    assert code == 0, err
    reads = _rows(tmp_path / "out" / "read_predictions.tsv")[1:]
    assert len(reads) == 24 and sum(r[0].endswith("/2") for r in reads) == 12
    assert len(_rows(tmp_path / "out" / "pair_predictions.tsv")) == 13


def test_the_python_api_runs_a_sheet_or_a_mapping_of_samples(client, sheet_run, tmp_path):
    from virnuc_dask import SequencingRun
    from virnuc_dask import predict as api_predict

    folder, sheet, _ = sheet_run
    options = {k: v for k, v in OVERRIDES.items() if k != "classifier"}
    run = api_predict(
        samplesheet=sheet.path,
        out=tmp_path / "RUN",
        classifier=TINY["classifier"],
        client=client,
        **options,
    )
    assert isinstance(run, SequencingRun) and run.exit_code == 0
    assert list(run.samples) == ["casava", "slash", "single", "contigs"]
    assert (
        run.samples["slash"].paths["reads"] == tmp_path / "RUN" / "slash" / "read_predictions.tsv"
    )
    assert run.table.read_text().splitlines()[0].startswith("sample\tstatus")
    src = folder / "in"
    mapping = {
        "slash": [src / "slash_1.fq", src / "slash_2.fq"],
        "contigs": [src / "contigs.fa"],
    }
    run2 = api_predict(
        samples=mapping,
        out=tmp_path / "RUN2",
        classifier=TINY["classifier"],
        client=client,
        **options,
    )
    assert [r["kind"] for r in run2.rows] == ["paired", "fasta"]
    for name in mapping:
        assert_same_results(tmp_path / "RUN2" / name, folder / "RUN" / name)
    with pytest.raises(ValueError, match="one of inputs, samplesheet or samples"):
        api_predict(out=tmp_path / "x", classifier=TINY["classifier"])


def _fastx(path: Path) -> list[str]:
    import gzip

    return gzip.decompress(path.read_bytes()).decode().splitlines()


def test_viral_reads_keep_the_input_records_and_pairs_together(sheet_run, tmp_path):
    from virnuc_dask.dataflow.viral_reads import write_viral_reads

    folder, sheet, _ = sheet_run
    for sample in sheet:
        out = tmp_path / sample.name
        shutil.copytree(folder / "RUN" / sample.name, out, ignore=shutil.ignore_patterns("*.zarr"))
        written = write_viral_reads(out, sample.inputs)
        calls = {r[0]: r[7] for r in _rows(out / "read_predictions.tsv")[1:]}
        name = "viral_reads.fasta.gz" if sample.kind == "fasta" else "viral_reads.fastq.gz"
        lines = _fastx(out / name)
        step = 2 if sample.kind == "fasta" else 4
        heads = lines[::step]
        if sample.kind == "paired":
            pairs = _rows(out / "pair_predictions.tsv")[1:]
            kept = [p[0] for p in pairs if "virus" in (p[9], p[10])]
            assert written == {"records": 2 * len(kept), "pairs": len(kept)}
            ids = [h[1:].split()[0] for h in heads]
            if sample.name == "casava":
                assert ids == [i for k in kept for i in (k, k)]
                assert [h.split()[1][:2] for h in heads] == ["1:", "2:"] * len(kept)
            else:
                assert ids == [f"{k}/{m}" for k in kept for m in (1, 2)]
        else:
            viral = [i for i, c in calls.items() if c == "virus"]
            assert [h[1:] for h in heads] == viral
            assert written["records"] == len(viral)
        assert heads and all(h[0] == ("@" if step == 4 else ">") for h in heads)
        if step == 4:
            assert all(len(q) == len(s) for s, q in zip(lines[1::4], lines[3::4], strict=True))


def test_report_of_a_run_has_an_overview_and_a_page_per_sample(sheet_run, tmp_path, capsys):
    from virnuc_dask.cli.main import main

    folder, sheet, _ = sheet_run
    run = tmp_path / "RUN"
    shutil.copytree(folder / "RUN", run)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    page = (run / "report.html").read_text()
    assert "Viral fraction per sample" in page and "<svg" in page
    for sample in sheet:
        assert f'<a href="{sample.name}/report.html">' in page
        assert (run / sample.name / "report.html").is_file()
        assert f"sample report: {run / sample.name / 'report.html'}" in out


def test_changed_files_recompute_only_their_sample(client, sheet_run, tmp_path):
    folder, sheet, _ = sheet_run
    src = tmp_path / "in"
    shutil.copytree(Path(sheet.path).parent, src)
    run = tmp_path / "RUN"
    first = predict_samples(_settings(run), client, sheet=read_samplesheet(src / "samples.csv"))
    assert first.exit_code == 0
    lines = (src / "single.fq").read_text().splitlines(keepends=True)
    (src / "single.fq").write_text("".join(lines[:-4]))  # one read fewer
    again = predict_samples(_settings(run), client, sheet=read_samplesheet(src / "samples.csv"))
    assert again.exit_code == 0
    reused = {
        s["sample"]: (s["partitions_reused"], s["partitions"]) for s in again.summary["samples"]
    }
    assert reused["single"][0] == 0 < reused["single"][1]
    for name in ("casava", "slash", "contigs"):
        assert reused[name][0] == reused[name][1] > 0, name
    assert [r.reads for r in again.rows if r.sample == "single"] == [13]


def test_multiqc_puts_the_samples_into_its_general_statistics(sheet_run, tmp_path):
    import subprocess
    import sys

    pytest.importorskip("multiqc")  # in the test extra
    folder, sheet, _ = sheet_run
    proc = subprocess.run(
        [sys.executable, "-m", "multiqc", str(folder / "RUN"), "-o", str(tmp_path), "--no-ansi"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "multiqc_data" / "multiqc_data.json").read_text())
    headers = data["report_general_stats_headers"]
    stats = data["report_general_stats_data"]
    (columns,) = [h for h in headers.values() if "viral_percent" in h]
    assert columns["viral_percent"]["title"] == "% Viral"
    assert {"viral_reads", "reads", "failed_records"} <= set(columns)
    (rows,) = [r for r in stats.values() if set(r) == {s.name for s in sheet}]
    with open(folder / "RUN" / "samples.tsv") as fh:
        table = {r["sample"]: r for r in csv.DictReader(fh, delimiter="\t")}
    for name, row in rows.items():
        assert row["reads"] == int(table[name]["reads"])
        assert row["viral_reads"] == int(table[name]["viral_reads"])
        assert row["viral_percent"] == pytest.approx(100 * float(table[name]["viral_fraction"]))


def test_the_first_samples_are_read_while_the_models_load(client, tmp_path, monkeypatch):
    """One model load for the run, and it does not hold the reading back: blocks of the
    first samples are read on the workers before the (slowed) load has finished."""
    from distributed import get_task_stream

    from virnuc_dask.worker.plugin import EVENT_TOPIC, ModelPlugin

    load = ModelPlugin.load

    def slow_load(self) -> None:
        time.sleep(4.0)
        load(self)

    monkeypatch.setattr(ModelPlugin, "load", slow_load)
    sheet = read_samplesheet(write_sequencing_run(tmp_path / "in"))
    started = time.time()
    with get_task_stream(client) as stream:
        result = predict_samples(_settings(tmp_path / "RUN"), client, sheet=sheet)
    assert result.exit_code == 0
    (ready,) = [
        t
        for t, msg in client.get_events(EVENT_TOPIC)
        if t > started and isinstance(msg, dict) and msg.get("state") == "ready"
    ]
    reads = [
        max(s["stop"] for s in task["startstops"])
        for task in stream.data
        if task["key"].startswith("read_orfs")
    ]
    assert reads and min(reads) < ready, (min(reads) - started, ready - started)
    assert result.summary["timings"]["load_models"] >= 4.0


def test_an_error_that_ends_the_run_stops_the_samples_in_flight(client, tmp_path, monkeypatch):
    """On a cluster the caller keeps, the samples still running when another sample's
    error ends the run stop at their next step; they are not run to their end."""
    import threading

    from helpers import write_perf_reads

    from virnuc_dask.dataflow import sequencing_run

    folder = tmp_path / "in"
    sheet_path = write_sequencing_run(folder)
    write_perf_reads(folder / "large.fa", 600, seed=5)
    sheet_path.write_text(sheet_path.read_text() + "large,,,large.fa\n")
    sheet = read_samplesheet(sheet_path)
    real = sequencing_run.predict

    def failing(settings, client, **kwargs):
        if Path(settings.out).name == "contigs":
            time.sleep(2.0)  # the large sample is under way
            raise RuntimeError("an error that ends the run")
        return real(settings, client, **kwargs)

    monkeypatch.setattr(sequencing_run, "predict", failing)
    settings = _settings(tmp_path / "RUN").replace(partition_rows=16)
    with pytest.raises(RuntimeError, match="ends the run"):
        predict_samples(settings, client, sheet=sheet)
    deadline = time.monotonic() + 60
    while any(t.name.startswith("sample") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "samples still running a minute after the error"
        time.sleep(0.1)
    assert not (tmp_path / "RUN" / "large" / "run_summary.json").exists()
