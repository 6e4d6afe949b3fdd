"""The Zarr store and its manifest: what counts as a finished partition."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

from virnuc_dask.dataflow.integrity import check_partition
from virnuc_dask.dataflow.store import EmbeddingStore, naming, read_rows
from virnuc_dask.errors import StoreDamaged
from virnuc_dask.files import atomic_write_text
from virnuc_dask.partition_result import FailedRecord, ModelStats, PartitionResult

DIMS = {"dnabert": 3, "esm": 5}


def new_store(
    tmp_path, rows=10, chunk_rows=4, fingerprint=None, embeddings="float32"
) -> EmbeddingStore:
    return EmbeddingStore.create(
        tmp_path,
        rows=rows,
        dims=DIMS,
        chunk_rows=chunk_rows,
        classes=2,
        fingerprint=fingerprint or {"inputs": "a"},
        embeddings=embeddings,
    )


def write(store: EmbeddingStore, index: int, row_start: int, n: int, failed=()) -> None:
    arrays = {"scores": np.full((n, 2), 0.5 + index, dtype=np.float32)}
    if store.embeddings is not None:
        arrays.update(
            {name: np.full((n, dim), index + 1, dtype=np.float32) for name, dim in DIMS.items()}
        )
    stats = {m: ModelStats(sequences=n, rows=n, unique=n) for m in DIMS}
    result = PartitionResult(index, row_start, n, "w", stats, failed=tuple(failed))
    store.write_partition(result, [f"orf{row_start + i}" for i in range(n)], arrays)


def test_written_partitions_are_done_and_readable(tmp_path):
    store = new_store(tmp_path)
    assert store.done_partitions() == set()
    write(store, 0, 0, 4)
    write(store, 2, 8, 2, failed=[FailedRecord(9, "orf9", "esm", "E: x")])
    assert store.done_partitions() == {0, 2}
    entry = store.entries()[2]
    assert entry.failed == (FailedRecord(9, "orf9", "esm", "E: x"),)
    assert entry.models["esm"].rows == 2 and entry.store_id == store.store_id
    # The file is the documented JSON: per-model statistics under the model's key.
    data = json.loads((store.manifest / "p0000002.json").read_text())
    assert data["failed"] == [{"row": 9, "id": "orf9", "stage": "esm", "error": "E: x"}]
    assert data["esm"]["unique"] == 2 and data["worker"] == "w" and data["finished"] > 0
    group = zarr.open_group(store.path, mode="r")
    assert list(group["ids"][8:10]) == ["orf8", "orf9"]
    assert (group["esm"][0:4] == 1).all() and (group["esm"][4:8] == 0).all()
    assert store.fingerprint == {"inputs": "a"}


def test_rows_without_manifest_entry_are_not_done(tmp_path):
    # The chunks of a partition are written, its entry is not: interrupted in between.
    store = new_store(tmp_path)
    write(store, 1, 4, 4)
    (store.manifest / "p0000001.json").unlink()
    assert store.done_partitions() == set()


def test_unreadable_or_half_written_entries_are_not_done(tmp_path):
    store = new_store(tmp_path)
    write(store, 0, 0, 4)
    write(store, 1, 4, 4)
    text = (store.manifest / "p0000001.json").read_text()
    (store.manifest / "p0000001.json").write_text(text[: len(text) // 2])
    (store.manifest / "p0000002.json").write_text("")
    assert store.done_partitions() == {0}
    entries, damaged = store.scan()
    assert set(entries) == {0} and set(damaged) == {1, 2}
    assert "p0000001.json" in damaged[1]


def test_an_entry_with_one_changed_byte_fails_its_checksum(tmp_path):
    store = new_store(tmp_path)
    write(store, 0, 0, 4)
    path = store.manifest / "p0000000.json"
    data = json.loads(path.read_text())
    assert data["checksum"].startswith("sha256:")
    assert data["chunks"] == ["ids/c/0", "scores/c/0/0", "dnabert/c/0/0", "esm/c/0/0"]
    path.write_text(path.read_text().replace('"rows": 4', '"rows": 5'))
    assert store.done_partitions() == set()
    assert "checksum does not match" in store.scan()[1][0]


def test_entries_of_an_earlier_store_never_count(tmp_path):
    store = new_store(tmp_path)
    write(store, 0, 0, 4)
    stale = (store.manifest / "p0000000.json").read_text()
    store = new_store(tmp_path, fingerprint={"inputs": "b"})
    assert store.done_partitions() == set()
    # Even an entry copied back in (a store replaced while a worker still wrote).
    (store.manifest / "p0000000.json").write_text(stale)
    assert store.done_partitions() == set()
    assert store.fingerprint == {"inputs": "b"}
    assert (zarr.open_group(store.path, mode="r")["esm"][0:4] == 0).all()


def test_create_leaves_no_building_directory(tmp_path):
    new_store(tmp_path)
    new_store(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.zarr", "partitions"]


def test_a_store_without_embeddings_keeps_ids_and_scores(tmp_path):
    store = new_store(tmp_path, embeddings=None)
    write(store, 1, 4, 4)
    group = zarr.open_group(store.path, mode="r")
    assert sorted(group.array_keys()) == ["ids", "scores"]
    assert store.embeddings is None
    assert (group["scores"][4:8] == 1.5).all()
    kept = new_store(tmp_path / "kept")
    write(kept, 0, 0, 4)
    kept.drop_embeddings()
    assert sorted(kept.group().array_keys()) == ["ids", "scores"]
    assert kept.embeddings is None and kept.done_partitions() == {0}


@pytest.mark.parametrize("damage", ["overwritten", "one bit flipped", "removed"])
def test_a_damaged_chunk_is_found_and_never_read_as_data(tmp_path, damage):
    store = new_store(tmp_path)
    write(store, 0, 0, 4)
    write(store, 1, 4, 4)
    assert check_partition(str(store.path), store.entries()[1]) is None
    chunk = store.path / "scores" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    if damage == "overwritten":
        chunk.write_bytes(b"garbage " * 8)
    elif damage == "one bit flipped":
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
    else:
        chunk.unlink()
    problem = check_partition(str(store.path), store.entries()[1])
    assert problem is not None and "scores/c/1" in problem
    assert check_partition(str(store.path), store.entries()[0]) is None
    group = zarr.open_group(store.path, mode="r")
    if damage != "removed":  # a removed chunk reads as fill values: the entry tells
        with pytest.raises(StoreDamaged, match=r"scores: rows 0-7 failed their checksum"):
            read_rows(group, "scores", 0, 8)


def test_empty_store(tmp_path):
    store = new_store(tmp_path, rows=0)
    assert store.exists() and store.done_partitions() == set()
    assert zarr.open_group(store.path, mode="r")["dnabert"].shape == (0, 3)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_text(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]
    atomic_write_text(target, json.dumps({"a": 1}))
    assert json.loads(target.read_text()) == {"a": 1}


def test_naming_puts_the_path_into_an_anonymous_os_error(tmp_path):
    with pytest.raises(OSError) as info, naming(tmp_path / "x.zarr"):
        raise OSError(28, "No space left on device")
    assert info.value.filename == str(tmp_path / "x.zarr")
    assert info.value.strerror == "No space left on device"
    with pytest.raises(OSError) as info, naming(tmp_path / "x.zarr"):
        raise FileNotFoundError(2, "No such file", "other")
    assert info.value.filename == "other"
