"""The project's own result formats against files kept in tests/data/golden: text fields
(ids, labels, counts, order) exactly, scores within the parity tolerance (1e-5), since float
results differ in their last digits from one CPU to the next.

An input with good reads, a read without any ORF, a read with characters that are not
nucleotides and a record with an empty sequence. After an intended change of a format,
regenerate with ``VIRNUC_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` and review
the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import DATA, REFERENCE, assert_same_table, tiny_settings

from virnuc_dask.dataflow.pipeline import predict

GOLDEN = DATA / "golden"
UPDATE = os.environ.get("VIRNUC_UPDATE_GOLDEN") == "1"


def _key_tree(value, *, dynamic=("workers", "hosts", "threads_per_worker")):
    """The summary's keys and value types, not its values (times and hosts vary)."""
    if isinstance(value, dict):
        return {k: ("<per-worker>" if k in dynamic else _key_tree(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_key_tree(value[0])] if value else []
    return type(value).__name__


@pytest.fixture(scope="module")
def run(client, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("golden")
    reads = (REFERENCE / "dev" / "basic" / "input.fa").read_text().splitlines()[:40]
    fasta = tmp / "input.fa"
    fasta.write_text(
        "\n".join(reads) + "\n>no_orf\nTAATAATAA\n>digits\nACGT12ACGT\n"
        ">empty\n>last_good\n" + reads[1] + "\n"
    )
    out = tmp / "out"
    # Every ORF embedded (last_good repeats a read): with dedup, which copies share a
    # batch changes the scores' last digits (tests/test_samples.py compares the two).
    settings = tiny_settings([fasta], out, partition_rows=16, dedup=False)
    assert predict(settings, client).exit_code == 2
    return out


def _compare(name: str, actual: str) -> None:
    golden = GOLDEN / name
    if UPDATE:
        golden.write_text(actual)
    assert golden.is_file(), f"{golden} missing: run with VIRNUC_UPDATE_GOLDEN=1"
    assert_same_table(actual, golden.read_text(), name=str(golden))


def _portable(text: str, out: Path) -> str:
    return text.replace(str(out.parent / "input.fa"), "input.fa")


@pytest.mark.parametrize(
    "name",
    [
        "read_predictions.tsv",
        "failed_records.tsv",
        "prediction_results.txt",
        "prediction_results_highestscore.csv",
    ],
)
def test_result_file_matches_golden(run, name):
    _compare(name, _portable((run / name).read_text(), run))


def test_run_summary_keys_match_golden(run):
    summary = json.loads((run / "run_summary.json").read_text())
    _compare(
        "run_summary_keys.json", json.dumps(_key_tree(summary), indent=1, sort_keys=True) + "\n"
    )
