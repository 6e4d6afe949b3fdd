"""A damaged store: a chunk of a finished run overwritten or with one bit flipped, a
manifest entry changed; and resuming with another choice of kept embeddings."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import REFERENCE, TINY

from virnuc_dask.config import load_settings
from virnuc_dask.dataflow.pipeline import predict

RESULTS = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "read_predictions.tsv",
    "failed_records.tsv",
)
MIXED = REFERENCE / "dev" / "mixed" / "input.fa"


def settings_for(out: Path, **overrides):
    values = {
        "out": str(out),
        "length": 300,
        "precision": "fp32",
        "blocksize": 8192,
        "partition_rows": 32,
        **TINY,
        **overrides,
    }
    return load_settings(inputs=[str(MIXED)], overrides=values)


@pytest.fixture(scope="module")
def clean(client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    assert predict(settings_for(out, keep_embeddings=True), client).exit_code == 0
    return out


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def assert_same_results(out: Path, expected: Path) -> None:
    for name in RESULTS:
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name


def flip_one_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("array", ["scores", "esm"])
@pytest.mark.parametrize("damage", ["overwritten", "one bit flipped"])
def test_a_damaged_chunk_is_named_and_its_partition_recomputed(
    client, clean, tmp_path, caplog, array, damage
):
    out = copy_run(clean, tmp_path / "run")
    chunk = out / "embeddings.zarr" / array / "c" / "2" / "0"
    if damage == "overwritten":
        chunk.write_bytes(b"\x00garbage from a torn write" * 40)
    else:
        flip_one_bit(chunk)
    for name in RESULTS:
        (out / name).unlink()
    with caplog.at_level(logging.WARNING):
        result = predict(settings_for(out, keep_embeddings=True), client)
    assert result.exit_code == 0
    assert result.partitions_reused == result.partitions - 1
    damaged = result.summary["partitions"]["damaged"]
    assert [d["partition"] for d in damaged] == [2]
    assert f"{array}/c/2" in damaged[0]["problem"]
    assert "partition 2 (rows 64-95) is damaged and is computed again" in caplog.text
    assert_same_results(out, clean)
    a = zarr.open_group(out / "embeddings.zarr", mode="r")
    b = zarr.open_group(clean / "embeddings.zarr", mode="r")
    assert np.abs(a[array][64:96] - b[array][64:96]).max() <= 1e-5


def test_a_changed_manifest_entry_is_recomputed(client, clean, tmp_path, caplog):
    out = copy_run(clean, tmp_path / "run")
    entry = out / "partitions" / "p0000001.json"
    data = json.loads(entry.read_text())
    data["rows"] += 1  # content changed, checksum left as it was
    entry.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        result = predict(settings_for(out, keep_embeddings=True), client)
    assert result.exit_code == 0 and result.partitions_reused == result.partitions - 1
    damaged = result.summary["partitions"]["damaged"]
    assert damaged == [
        {
            "partition": 1,
            "problem": "manifest entry p0000001.json: checksum does not match the entry's content",
        }
    ]
    assert_same_results(out, clean)


def test_results_are_never_written_from_a_chunk_that_fails_its_check(client, clean, tmp_path):
    """Damage found while the results are written (after the check on resume) stops the
    run; the earlier result files stay as they were."""
    from virnuc_dask.dataflow.store import read_rows
    from virnuc_dask.errors import StoreDamaged

    out = copy_run(clean, tmp_path / "run")
    flip_one_bit(out / "embeddings.zarr" / "scores" / "c" / "3" / "0")
    with pytest.raises(StoreDamaged, match="re-run the same command"):
        read_rows(zarr.open_group(out / "embeddings.zarr", mode="r"), "scores", 0, 128)


def test_resuming_with_another_choice_of_embeddings_says_what_it_recomputes(
    client, clean, tmp_path, caplog
):
    out = copy_run(clean, tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        lean = predict(settings_for(out), client)
    assert lean.partitions_reused == lean.partitions  # nothing recomputed
    assert "this run keeps none: they are removed, nothing is recomputed" in caplog.text
    group = zarr.open_group(out / "embeddings.zarr", mode="r")
    assert "esm" not in group and "dnabert" not in group
    assert_same_results(out, clean)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        kept = predict(settings_for(out, keep_embeddings=True, embeddings_dtype="float16"), client)
    assert kept.partitions_reused == 0
    assert (
        f"kept no embeddings: its {kept.partitions} finished partitions are all computed "
        "again to keep float16 embeddings"
    ) in caplog.text
    group = zarr.open_group(out / "embeddings.zarr", mode="r")
    full = zarr.open_group(clean / "embeddings.zarr", mode="r")
    assert group["esm"].dtype == np.float16
    assert np.abs(group["esm"][:].astype(np.float32) - full["esm"][:]).max() <= 1e-2
    assert_same_results(out, clean)
