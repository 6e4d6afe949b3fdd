"""``embeddings.zarr`` and its manifest of finished partitions: the run's resume state.

Rows are ORFs in input order. Arrays: ``ids`` (strings), one ``[rows, dim]``
float32 array per model, ``scores`` ``[rows, classes]``. A store of a run with
dedup also has ``<model>_source`` (int64 ``[rows]``): the row whose embedding a row
takes, itself for the first copy of an input; the other copies' rows of ``<model>``
stay zero, and :func:`read_rows` / :func:`lazy_rows` read through the index. The row chunk length
equals the partition size, so each partition writes whole chunks and no two
tasks ever touch the same chunk.

A partition counts as done only when its manifest entry
``partitions/p<index>.json`` exists and names the store it was written into.
The entry is written atomically (temporary file + rename) after the
partition's chunk files have been written and flushed to disk (``fsync``), so
a partition interrupted halfway, by a crash or a power cut, is computed again.
The entry also lists the partition's records that could not be embedded.

A new store is built beside the old one and renamed into place; the group's
attributes hold the run's fingerprint (inputs, models, settings), checked
before anything is reused, and a random ``store_id`` that manifest entries
must carry: an entry left over from an earlier store never counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from virnuc_dask.files import atomic_write_text
from virnuc_dask.models import MODEL_KEYS
from virnuc_dask.partition_result import PartitionResult
from virnuc_dask.rundir import MANIFEST, STORE


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Give an OSError raised inside (Zarr's, a full disk's) ``path`` as its file name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EmbeddingStore:
    """Open or create the store under ``out``; see the module docstring for the layout.

    >>> import tempfile
    >>> store = EmbeddingStore.create(tempfile.mkdtemp(), rows=10, dims={"dnabert": 4, "esm": 6},
    ...                               chunk_rows=4, classes=2, fingerprint={"k": 1})
    >>> store.done_partitions()
    set()
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.path = self.out / STORE
        self.manifest = self.out / MANIFEST

    @classmethod
    def create(
        cls,
        out: str | os.PathLike[str],
        *,
        rows: int,
        dims: Mapping[str, int],
        chunk_rows: int,
        classes: int,
        fingerprint: Mapping[str, Any],
        dedup: bool = False,
    ) -> EmbeddingStore:
        """A new, empty store (replacing any store and manifest under ``out``)."""
        store = cls(out)
        shutil.rmtree(store.manifest, ignore_errors=True)
        building = store.out / f".embeddings.zarr.{os.getpid()}.new"
        shutil.rmtree(building, ignore_errors=True)
        try:
            with naming(store.path):
                group = zarr.open_group(building, mode="w")
                chunk = max(1, min(chunk_rows, rows))
                group.create_array("ids", shape=(rows,), chunks=(chunk,), dtype=str)
                for name in MODEL_KEYS:
                    group.create_array(
                        name,
                        shape=(rows, dims[name]),
                        chunks=(chunk, dims[name]),
                        dtype="float32",
                        fill_value=0.0,
                    )
                    if dedup:
                        group.create_array(
                            f"{name}_source",
                            shape=(rows,),
                            chunks=(chunk,),
                            dtype="int64",
                            fill_value=-1,
                        )
                group.create_array(
                    "scores",
                    shape=(rows, classes),
                    chunks=(chunk, classes),
                    dtype="float32",
                    fill_value=0.0,
                )
                group.attrs.update(
                    {
                        "fingerprint": dict(fingerprint),
                        "chunk_rows": chunk_rows,
                        "rows": rows,
                        "store_id": uuid.uuid4().hex,
                    }
                )
                shutil.rmtree(store.path, ignore_errors=True)
                os.rename(building, store.path)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        store.manifest.mkdir(parents=True, exist_ok=True)
        return store

    def exists(self) -> bool:
        return (self.path / "zarr.json").is_file()

    def group(self, mode: str = "r") -> zarr.Group:
        return zarr.open_group(self.path, mode=mode)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.group().attrs.get("fingerprint", {}))

    @property
    def store_id(self) -> str | None:
        return self.group().attrs.get("store_id")

    def write_partition(
        self,
        result: PartitionResult,
        ids: Sequence[str],
        arrays: Mapping[str, np.ndarray],
        *,
        done: bool = True,
        sources: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Write one partition's rows, flush them to disk, then record the partition as done.

        ``result.failed``: the partition's records that could not be embedded (their rows
        hold zeros). ``done=False``: write the rows but do not record the partition (it is
        computed again by the next run). ``sources``: per model, the ``<model>_source`` rows.
        """
        row_start = result.row_start
        group = self.group("r+")
        stop = row_start + len(ids)
        written = []
        indexes = {f"{m}_source": v for m, v in (sources or {}).items()}
        with naming(self.path):
            for name, values in (
                ("ids", np.asarray(ids, dtype=str)),
                *arrays.items(),
                *indexes.items(),
            ):
                array = group[name]
                array[row_start:stop] = values
                written.append(
                    self.path
                    / name
                    / array.metadata.encode_chunk_key(
                        (row_start // array.chunks[0],) + (0,) * (array.ndim - 1)
                    )
                )
            for path in written:
                if path.is_file():  # a chunk equal to the fill value is not stored at all
                    _fsync(path)
        if not done:
            return
        entry = dataclasses.replace(
            result, store_id=group.attrs.get("store_id"), finished=time.time()
        )
        atomic_write_text(
            self.manifest / f"p{result.partition:07d}.json", json.dumps(entry.to_json())
        )

    def entries(self) -> dict[int, PartitionResult]:
        """Manifest entries of this store's finished partitions, by partition index."""
        if not (self.manifest.is_dir() and self.exists()):
            return {}
        store_id = self.store_id
        found = {}
        for path in self.manifest.glob("p*.json"):
            try:
                entry = PartitionResult.from_json(json.loads(path.read_text()))
                if entry.store_id == store_id:
                    found[entry.partition] = entry
            except (ValueError, KeyError, TypeError, OSError):
                continue  # unreadable entry: the partition is simply computed again
        return found

    def done_partitions(self) -> set[int]:
        return set(self.entries())


def read_rows(
    group: zarr.Group, name: str, lo: int, hi: int, source: np.ndarray | None = None
) -> np.ndarray:
    """Rows ``[lo, hi)`` of model array ``name``, through ``<name>_source`` when present."""
    array = group[name]
    values = array[lo:hi]
    index = f"{name}_source"
    if index not in group:
        return values
    source = group[index][lo:hi] if source is None else np.asarray(source)
    other = np.flatnonzero(source != np.arange(lo, hi))
    if not len(other):
        return values
    inside = (source[other] >= lo) & (source[other] < hi)
    values[other[inside]] = values[source[other[inside]] - lo]
    outside = other[~inside]
    if len(outside):
        need, at = np.unique(source[outside], return_inverse=True)
        values[outside] = array.get_orthogonal_selection((need, slice(None)))[at]
    return values


def _rows_block(source: np.ndarray, path: str, name: str, block_info=None) -> np.ndarray:
    lo, hi = block_info[0]["array-location"][0]
    return read_rows(zarr.open_group(path, mode="r"), name, lo, hi, source)


def lazy_rows(path: str | os.PathLike[str], name: str):
    """Model array ``name`` of the store at ``path`` as a lazy dask array, one task per
    row chunk, reading through ``<name>_source`` when present."""
    import dask.array as da

    group = zarr.open_group(path, mode="r")
    if f"{name}_source" not in group:
        return da.from_zarr(str(path), component=name)
    array = group[name]
    source = da.from_zarr(str(path), component=f"{name}_source")
    return source.map_blocks(
        _rows_block,
        str(path),
        name,
        dtype=array.dtype,
        new_axis=1,
        chunks=(source.chunks[0], (array.shape[1],)),
        meta=np.empty((0, 0), dtype=array.dtype),
    )
