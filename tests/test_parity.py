"""The pipeline reproduces the original VirNucPro outputs on every reference case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import CASES, LENGTHS, TINY, read_embeddings_tsv

from virnuc_dask.config import load_settings
from virnuc_dask.pipeline import predict


def read_results(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    lines = path.read_text().splitlines()
    assert lines[0] == "Sequence_ID\tPrediction\tscore1\tscore2"
    rows = [line.split("\t") for line in lines[1:]]
    return [(r[0], r[1]) for r in rows], np.array([[float(r[2]), float(r[3])] for r in rows])


def assert_matches_reference(out: Path, ref: Path) -> None:
    labels, scores = read_results(out / "prediction_results.txt")
    ref_labels, ref_scores = read_results(ref / "prediction_results.txt")
    assert labels == ref_labels
    assert np.abs(scores - ref_scores).max() <= 1e-5
    assert (out / "prediction_results_highestscore.csv").read_bytes() == \
        (ref / "prediction_results_highestscore.csv").read_bytes()
    group = zarr.open_group(out / "embeddings.zarr", mode="r")
    for array, tsv in (("dnabert", "dnabert_s_embeddings.tsv"), ("esm", "esm_embeddings.tsv")):
        ids, expected = read_embeddings_tsv(ref / tsv)
        assert list(group["ids"][:]) == ids
        assert np.abs(group[array][:] - expected).max() <= 1e-5


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_pipeline_matches_original(client, reference, tmp_path, case, length):
    # Small blocks and partitions, so that partitions span blocks and blocks span partitions.
    settings = load_settings(
        inputs=[str(reference / "dev" / case / "input.fa")],
        overrides={"out": str(tmp_path), "length": length, "precision": "fp32",
                   "blocksize": 4096, "partition_rows": 37, **TINY})
    result = predict(settings, client)
    assert result.exit_code == 0
    assert result.partitions > 1
    assert_matches_reference(tmp_path, reference / "dev" / case / f"L{length}")
    reads = (tmp_path / "read_predictions.tsv").read_text().splitlines()
    n_reads = sum(1 for line in (reference / "dev" / case / "input.fa").open()
                  if line.startswith(">"))
    assert len(reads) == 1 + n_reads


@pytest.mark.parametrize("length", LENGTHS)
def test_cli_on_default_cluster_matches_original(reference, tmp_path, length):
    case = "mixed"
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "virnuc_dask", "predict",
         str(reference / "dev" / case / "input.fa"), "--length", str(length),
         "--esm-model", TINY["esm_model"], "--dnabert-model", TINY["dnabert_model"],
         "--classifier", TINY["classifier"], "--out", str(out), "--precision", "fp32"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_matches_reference(out, reference / "dev" / case / f"L{length}")
