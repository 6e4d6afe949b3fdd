"""The pipeline reproduces the original VirNucPro outputs on every reference case."""

from __future__ import annotations

import subprocess

import pytest
from helpers import CASES, LENGTHS, assert_matches_reference, predict_command, tiny_settings

from virnuc_dask.dataflow.pipeline import predict


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_pipeline_matches_original(client, reference, tmp_path, case, length):
    # Small blocks and partitions, so that partitions span blocks and blocks span partitions.
    settings = tiny_settings(
        [reference / "dev" / case / "input.fa"],
        tmp_path,
        length=length,
        blocksize=4096,
        partition_rows=37,
        keep_embeddings=True,  # compared with the original's too
    )
    result = predict(settings, client)
    assert result.exit_code == 0
    assert result.partitions > 1
    assert_matches_reference(tmp_path, reference / "dev" / case / f"L{length}")
    reads = (tmp_path / "read_predictions.tsv").read_text().splitlines()
    n_reads = sum(
        1 for line in (reference / "dev" / case / "input.fa").open() if line.startswith(">")
    )
    assert len(reads) == 1 + n_reads


@pytest.mark.parametrize("length", LENGTHS)
def test_cli_on_default_cluster_matches_original(reference, tmp_path, length):
    case = "mixed"
    out = tmp_path / "out"
    proc = subprocess.run(
        [*predict_command(reference / "dev" / case / "input.fa", length=length), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_matches_reference(out, reference / "dev" / case / f"L{length}")
