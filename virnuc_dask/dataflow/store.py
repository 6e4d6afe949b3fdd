"""``embeddings.zarr`` and its manifest of finished partitions: the run's resume state.

Rows are ORFs in input order. Arrays: ``ids`` (strings) and ``scores``
``[rows, classes]`` always (a run without a classifier, training, has no scores);
one ``[rows, dim]`` array per model only when the run keeps its embeddings
(``embeddings`` attribute: ``float32`` or ``float16``; ``None``: not kept). A store
of a run with dedup also has ``<name>_source`` (int64 ``[rows]``) beside each such
array: the row whose values a row takes, itself where they were computed; the other
rows stay zero, and :func:`read_rows` / :func:`lazy_rows` read through the index
(``scores_source``: the earlier row whose both model inputs a row repeats). The row
chunk length equals the partition size, so each partition writes whole chunks and
no two tasks ever touch the same chunk.

Every chunk carries a CRC-32C checksum (Zarr's ``crc32c`` codec, checked on every
read: a chunk overwritten or with one bit flipped raises :class:`StoreDamaged`), and
every manifest entry a SHA-256 of its content and the list of chunk files its
partition wrote (:mod:`virnuc_dask.dataflow.integrity` checks them on resume).

A partition counts as done only when its manifest entry
``partitions/p<index>.json`` exists and names the store it was written into.
The entry is written atomically (temporary file + rename) after the
partition's chunk files have been written and flushed to disk (``fsync``), so
a partition interrupted halfway, by a crash or a power cut, is computed again.
The entry also lists the partition's records that could not be embedded.

The store is created before the inputs are all read, with room for any number of
rows (``GROWING_ROWS``); when every partition is finished, :meth:`~EmbeddingStore.finish`
sets the arrays' length to the run's rows. Every ``zarr.json`` is checksummed too
(:mod:`virnuc_dask.dataflow.store_metadata`).

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
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from virnuc_dask.dataflow import store_metadata
from virnuc_dask.errors import StoreDamaged
from virnuc_dask.files import atomic_write_text
from virnuc_dask.models import MODEL_KEYS
from virnuc_dask.partition_result import PartitionResult
from virnuc_dask.rundir import MANIFEST, STORE

#: What ``--embeddings-dtype`` may ask for.
EMBEDDING_DTYPES = ("float32", "float16")
#: The layout version; a store of another layout is not resumed.
STORE_FORMAT = 3
SCORES = "scores"
#: Rows of a store whose length is not known yet (the inputs are still being read):
#: chunks that are never written take no space; :meth:`EmbeddingStore.finish` cuts the
#: arrays to the rows the run has.
GROWING_ROWS = 2**40


def checked_compressors() -> tuple:
    """Zarr compressors of every stored array: zstd, then a CRC-32C of the compressed
    bytes (last, so it is checked first on read)."""
    return (ZstdCodec(level=3), Crc32cCodec())


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
    >>> store = EmbeddingStore.create(tempfile.mkdtemp(), rows=10,
    ...     dims=dict.fromkeys(MODEL_KEYS, 4), chunk_rows=4, classes=2, fingerprint={"k": 1})
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
        rows: int | None,
        dims: Mapping[str, int],
        chunk_rows: int,
        classes: int,
        fingerprint: Mapping[str, Any],
        dedup: bool = False,
        embeddings: str | None = None,
    ) -> EmbeddingStore:
        """A new, empty store (replacing any store and manifest under ``out``).

        ``rows``: None while the inputs are being read (see :meth:`finish`);
        ``classes``: width of ``scores`` (0: no scores); ``embeddings``: the dtype in
        which the model arrays are kept (``None``: no model arrays).
        """
        if embeddings is not None and embeddings not in EMBEDDING_DTYPES:
            raise ValueError(
                f"embeddings dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {embeddings!r}"
            )
        store = cls(out)
        shutil.rmtree(store.manifest, ignore_errors=True)
        building = store.out / f".embeddings.zarr.{os.getpid()}.new"
        shutil.rmtree(building, ignore_errors=True)
        try:
            with naming(store.path):
                group = zarr.open_group(building, mode="w")
                length = GROWING_ROWS if rows is None else rows
                chunk = max(1, min(chunk_rows, length))
                rowwise: dict[str, tuple[tuple[int, ...], str, Any]] = {"ids": ((), str, "")}
                if classes:
                    rowwise[SCORES] = ((classes,), "float32", 0.0)
                if embeddings is not None:
                    for name in MODEL_KEYS:
                        rowwise[name] = ((dims[name],), embeddings, 0.0)
                for name, (width, dtype, fill) in rowwise.items():
                    group.create_array(
                        name,
                        shape=(length, *width),
                        chunks=(chunk, *width),
                        dtype=dtype,
                        fill_value=fill,
                        compressors=checked_compressors(),
                    )
                    if dedup and name != "ids":
                        group.create_array(
                            f"{name}_source",
                            shape=(length,),
                            chunks=(chunk,),
                            dtype="int64",
                            fill_value=-1,
                            compressors=checked_compressors(),
                        )
                group.attrs.update(
                    {
                        "fingerprint": dict(fingerprint),
                        "chunk_rows": chunk_rows,
                        "rows": rows,
                        "store_id": uuid.uuid4().hex,
                        "embeddings": embeddings,
                    }
                )
                shutil.rmtree(store.path, ignore_errors=True)
                os.rename(building, store.path)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        store.manifest.mkdir(parents=True, exist_ok=True)
        store_metadata.record(store.path)
        return store

    def record_metadata(self) -> None:
        """Record the checksums of the store's metadata files, after changing them."""
        store_metadata.record(self.path)

    @property
    def rows(self) -> int | None:
        """The store's rows; None while the run that creates it is still reading."""
        return self.group().attrs.get("rows")

    def finish(self, rows: int) -> None:
        """Set every array's length to ``rows`` (all of the run's partitions are written;
        nothing writes to the store meanwhile) and record the new metadata."""
        if self.rows == rows:
            return
        group = self.group("r+")
        with naming(self.path):
            for _, array in group.arrays():
                if array.shape[0] != rows:
                    # Chunks past ``rows`` were never written: nothing to delete.
                    sync(array.async_array.resize((rows, *array.shape[1:]), False))
            group.attrs["rows"] = rows
        self.record_metadata()

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

    @property
    def embeddings(self) -> str | None:
        """The dtype the store keeps the embeddings in; ``None``: it keeps none."""
        return self.group().attrs.get("embeddings")

    def drop_embeddings(self) -> None:
        """Remove the model arrays (the scores stay): a resumed run that keeps none."""
        group = self.group("r+")
        for name in MODEL_KEYS:
            for array in (name, f"{name}_source"):
                if array in group:
                    del group[array]
        group.attrs["embeddings"] = None
        self.record_metadata()

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

        ``arrays``: values by array name (``scores``, the kept model arrays).
        ``result.failed``: the partition's records that could not be embedded (their rows
        hold zeros). ``done=False``: write the rows but do not record the partition (it is
        computed again by the next run). ``sources``: by array name, the ``<name>_source``
        rows (written where the store has that index).
        """
        row_start = result.row_start
        group = self.group("r+")
        stop = row_start + len(ids)
        written = []
        indexes = {f"{m}_source": v for m, v in (sources or {}).items() if f"{m}_source" in group}
        with naming(self.path):
            for name, values in (
                ("ids", np.asarray(ids, dtype=str)),
                *arrays.items(),
                *indexes.items(),
            ):
                array = group[name]
                array[row_start:stop] = values
                key = array.metadata.encode_chunk_key(
                    (row_start // array.chunks[0],) + (0,) * (array.ndim - 1)
                )
                written.append(f"{name}/{key}")
            # A chunk equal to the fill value is not stored at all.
            written = [path for path in written if (self.path / path).is_file()]
            for path in written:
                _fsync(self.path / path)
        if not done:
            return
        entry = dataclasses.replace(
            result,
            store_id=group.attrs.get("store_id"),
            finished=time.time(),
            chunks=tuple(written),
        )
        atomic_write_text(self.entry_path(result.partition), json.dumps(entry.to_json()))

    def entry_path(self, partition: int) -> Path:
        return self.manifest / f"p{partition:07d}.json"

    def scan(self) -> tuple[dict[int, PartitionResult], dict[int, str]]:
        """This store's finished partitions by index, and the entries that failed their
        checksum or could not be read (by partition index: what is wrong)."""
        if not (self.manifest.is_dir() and self.exists()):
            return {}, {}
        store_id = self.store_id
        found, damaged = {}, {}
        for path in sorted(self.manifest.glob("p*.json")):
            try:
                entry = PartitionResult.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                index = path.stem[1:]
                if index.isdigit():
                    damaged[int(index)] = f"manifest entry {path.name}: {exc}"
                continue
            if entry.store_id == store_id:
                found[entry.partition] = entry
        return found, damaged

    def entries(self) -> dict[int, PartitionResult]:
        """Manifest entries of this store's finished partitions, by partition index."""
        return self.scan()[0]

    def forget(self, partition: int) -> None:
        """Remove a partition's manifest entry: the partition is computed again."""
        self.entry_path(partition).unlink(missing_ok=True)

    def done_partitions(self) -> set[int]:
        return set(self.entries())


def _damaged(path: str | os.PathLike[str], name: str, lo: int, hi: int, exc: Exception):
    return StoreDamaged(
        f"{Path(path) / name}: rows {lo}-{hi - 1} failed their checksum ({exc}); "
        "re-run the same command: damaged partitions are found and computed again"
    )


def read_rows(
    group: zarr.Group, name: str, lo: int, hi: int, source: np.ndarray | None = None
) -> np.ndarray:
    """Rows ``[lo, hi)`` of array ``name``, through ``<name>_source`` when present.

    Raises :class:`StoreDamaged` when a chunk read fails its checksum.
    """
    try:
        return _read_rows(group, name, lo, hi, source)
    except (ValueError, RuntimeError) as exc:  # what Zarr's codecs raise for bad bytes
        raise _damaged(group.store_path.store.root, name, lo, hi, exc) from exc


def _read_rows(
    group: zarr.Group, name: str, lo: int, hi: int, source: np.ndarray | None
) -> np.ndarray:
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
    chunk = array.chunks[0]
    # Chunk by chunk (what Zarr reads anyway): an index over every chunk of a store still
    # growing (GROWING_ROWS) would not fit in memory.
    for c in np.unique(source[outside] // chunk).tolist():
        mine = outside[source[outside] // chunk == c]
        rows = array[c * chunk : min((c + 1) * chunk, array.shape[0])]
        values[mine] = rows[source[mine] - c * chunk]
    return values


def _rows_block(source: np.ndarray, path: str, name: str, block_info=None) -> np.ndarray:
    lo, hi = block_info[0]["array-location"][0]
    return read_rows(zarr.open_group(path, mode="r"), name, lo, hi, source)


def lazy_rows(path: str | os.PathLike[str], name: str):
    """Array ``name`` of the store at ``path`` as a lazy dask array, one task per
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
