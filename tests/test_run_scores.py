"""Identical inputs across the samples of a sequencing run are embedded once: the run's
score table, the rows a partition takes from it, and whole sheet runs with it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REFERENCE, TINY, read_fasta_pairs
from test_sequencing_run import assert_same_results

from virnuc_dask.config import load_settings
from virnuc_dask.core.samplesheet import read_samplesheet
from virnuc_dask.dataflow.copies import plan_rows
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.dataflow.run_scores import FANOUT, RunScores, input_keys, take_scores
from virnuc_dask.dataflow.sequencing_run import predict_samples, sample_settings
from virnuc_dask.dataflow.store import EmbeddingStore
from virnuc_dask.models.registry import MODEL_KEYS
from virnuc_dask.rundir import RUN_SCORES

OVERRIDES = {"length": 300, "precision": "fp32", "blocksize": 2048, "partition_rows": 37, **TINY}


def _keys(*texts: str) -> np.ndarray:
    return input_keys({m: list(texts) for m in MODEL_KEYS})


def test_a_published_score_is_found_by_its_inputs_only(tmp_path):
    table = RunScores(tmp_path)
    table.publish(_keys("AAA", "CCC"), np.array([[0.1, 0.9], [0.7, 0.3]], np.float32))
    table.publish(_keys("GGG"), np.array([[0.5, 0.5]], np.float32))
    found, scores = table.lookup(_keys("GGG", "TTT", "AAA"))
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(scores[[0, 2]], np.float32([[0.5, 0.5], [0.1, 0.9]]))
    # Same nucleotide slice, another protein: another input, not found.
    other = input_keys({MODEL_KEYS[0]: ["AAA"], MODEL_KEYS[-1]: ["XXX"]})
    assert not table.lookup(other)[0].any()


def test_table_files_are_merged_level_by_level_and_every_score_stays(tmp_path):
    table = RunScores(tmp_path)
    texts = [f"ACGT{i}" for i in range(FANOUT * FANOUT + 3)]
    scores = np.arange(2 * len(texts), dtype=np.float32).reshape(-1, 2)
    for i, text in enumerate(texts):
        table.publish(_keys(text), scores[i : i + 1])
    names = sorted(p.name.partition("-")[0] for p in tmp_path.glob("*.scores"))
    assert names == ["0", "0", "0", "2"]  # 64 merged into 8, the 8 into one
    found, got = table.lookup(_keys(*texts))
    assert found.all()
    np.testing.assert_array_equal(got, scores)


def test_a_damaged_table_file_is_dropped_and_its_rows_embedded(tmp_path, caplog):
    table = RunScores(tmp_path / "t")
    path = table.publish(_keys("AAA"), np.array([[0.1, 0.9]], np.float32))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    found, scores = table.lookup(_keys("AAA"))
    assert not found.any() and scores is None
    assert not path.exists()
    assert "content does not match its checksum" in caplog.text


def test_a_taken_row_is_still_embedded_where_another_row_needs_its_vector(tmp_path):
    first, last = MODEL_KEYS[0], MODEL_KEYS[-1]
    # Row 1 repeats row 0's nucleotide slice only: it takes row 0's first-model vector.
    texts = {first: ["AAA", "AAA", "GGG"], last: ["P", "Q", "R"]}
    plan = plan_rows(0, 3, {first: np.array([0, 0, 2]), last: np.array([0, 1, 2])}, scoring=True)
    RunScores(tmp_path).publish(
        input_keys({first: ["AAA", "GGG"], last: ["P", "R"]}),
        np.array([[0.1, 0.9], [0.2, 0.8]], np.float32),
    )
    plan, taken = take_scores(str(tmp_path), texts, plan, classes=2)
    assert taken.rows.tolist() == [True, False, True] and taken.count == 2
    assert plan.embed[first].tolist() == [True, False, False]  # row 1 needs row 0's
    assert plan.embed[last].tolist() == [False, True, False]
    np.testing.assert_array_equal(taken.scores[[0, 2]], np.float32([[0.1, 0.9], [0.2, 0.8]]))


def _sheet(folder: Path, samples: dict[str, list[tuple[str, str]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["sample,fastq_1,fastq_2,fasta"]
    for name, reads in samples.items():
        (folder / f"{name}.fa").write_text("".join(f">{i}\n{s}\n" for i, s in reads))
        lines.append(f"{name},,,{name}.fa")
    (folder / "samples.csv").write_text("\n".join(lines) + "\n")
    return folder / "samples.csv"


def _settings(out: Path):
    return load_settings(overrides={"out": str(out), **OVERRIDES})


def _table(run: Path) -> dict[str, dict[str, str]]:
    with open(run / "samples.tsv") as fh:
        return {r["sample"]: r for r in csv.DictReader(fh, delimiter="\t")}


def test_a_sample_takes_the_scores_of_inputs_another_sample_scored(client, tmp_path):
    reads = read_fasta_pairs(REFERENCE / "dev" / "basic" / "input.fa")
    # A shared "phage": reads 0-29 in both samples, under other ids in the second.
    first = reads[:40]
    second = [(f"s2_{i}", s) for i, s in reads[:30]] + reads[40:55]
    run = tmp_path / "RUN"
    sheet = read_samplesheet(_sheet(tmp_path / "in", {"first": first}))
    assert predict_samples(_settings(run), client, sheet=sheet).exit_code == 0
    assert _table(run)["first"]["orfs_from_run"] == "0"
    assert any((run / RUN_SCORES).rglob("*.scores"))

    sheet = read_samplesheet(_sheet(tmp_path / "in", {"first": first, "second": second}))
    result = predict_samples(_settings(run), client, sheet=sheet)
    assert result.exit_code == 0
    table = _table(run)
    assert table["first"]["orfs_from_run"] == "0"
    taken = int(table["second"]["orfs_from_run"])
    assert 0 < taken < int(table["second"]["orfs"])
    summary = json.loads((run / "run_summary.json").read_text())
    assert {s["sample"]: s["orfs_from_run"] for s in summary["samples"]}["second"] == taken
    embedded = json.loads((run / "second" / "run_summary.json").read_text())

    # Its outputs are those of the sample alone (scores within 1e-5), which embeds more.
    alone = predict(sample_settings(_settings(tmp_path / "alone"), sheet.samples[1]), client)
    assert alone.exit_code == 0
    assert_same_results(run / "second", tmp_path / "alone" / "second")
    for m in MODEL_KEYS:
        assert embedded["embedding"][m]["embedded"] < alone.summary["embedding"][m]["embedded"]

    # The sample resumes alone: without the table, without the other sample's folder.
    shutil.rmtree(run / RUN_SCORES)
    shutil.rmtree(run / "first")
    again = predict(sample_settings(_settings(run), sheet.samples[1]), client)
    assert again.partitions_reused == again.partitions > 0
    assert_same_results(run / "second", tmp_path / "alone" / "second")
    assert sum(e.from_run for e in EmbeddingStore(run / "second").entries().values()) == taken


@pytest.mark.parametrize("dedup", [False])
def test_without_dedup_no_scores_are_shared(client, tmp_path, dedup):
    reads = read_fasta_pairs(REFERENCE / "dev" / "basic" / "input.fa")
    sheet = read_samplesheet(_sheet(tmp_path / "in", {"a": reads[:20], "b": reads[:20]}))
    settings = _settings(tmp_path / "RUN").replace(dedup=dedup)
    assert predict_samples(settings, client, sheet=sheet).exit_code == 0
    assert not (tmp_path / "RUN" / RUN_SCORES).exists()
    assert {r["orfs_from_run"] for r in _table(tmp_path / "RUN").values()} == {"0"}


def test_samples_in_flight_together_take_each_others_scores(client, tmp_path):
    # One device: partitions are embedded one after the other, each sample's in turn, and
    # each partition's scores are shared as soon as it is scored.
    reads = read_fasta_pairs(REFERENCE / "dev" / "basic" / "input.fa")
    phage = reads[:20]
    sheet = read_samplesheet(
        _sheet(
            tmp_path / "in",
            {
                "a": reads[20:40] + phage,
                "b": [(f"b_{i}", s) for i, s in phage] + reads[40:60],
                "c": reads[60:70] + [(f"c_{i}", s) for i, s in phage],
            },
        )
    )
    run = tmp_path / "RUN"
    assert predict_samples(_settings(run), client, sheet=sheet).exit_code == 0
    table = _table(run)
    assert sum(int(r["orfs_from_run"]) for r in table.values()) > 0
    for sample in sheet:
        predict(sample_settings(_settings(tmp_path / "alone"), sample), client)
        assert_same_results(run / sample.name, tmp_path / "alone" / sample.name)


def test_a_run_started_afresh_drops_the_shared_scores(tmp_path):
    from virnuc_dask.dataflow.run_scores import RUN_TABLE
    from virnuc_dask.dataflow.sequencing_run import shared_scores

    settings = _settings(tmp_path / "RUN")
    facts = shared_scores(settings, {"precision": "fp32"})
    RunScores(facts[RUN_TABLE]).publish(_keys("AAA"), np.float32([[0.1, 0.9]]))
    assert shared_scores(settings, {"precision": "fp32"}) == facts  # resumed: kept
    assert RunScores(facts[RUN_TABLE]).lookup(_keys("AAA"))[0].all()
    other = shared_scores(settings, {"precision": "bf16"})[RUN_TABLE]
    assert other != facts[RUN_TABLE]  # other scores, another table
    shared_scores(settings.replace(overwrite=True), {"precision": "fp32"})
    assert not (tmp_path / "RUN" / RUN_SCORES).exists()


def test_a_table_that_cannot_be_written_costs_only_the_sharing(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    table = RunScores(tmp_path / "file" / "table")  # its folder cannot be made
    assert table.publish(_keys("AAA"), np.float32([[0.1, 0.9]])) is None
    assert "scores not shared with the other samples" in caplog.text
    assert not table.lookup(_keys("AAA"))[0].any()
