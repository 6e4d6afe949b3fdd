"""``embeddings.zarr`` and its manifest of finished partitions: the run's resume state.

Rows are ORFs in input order. Arrays: ``ids`` (strings), one ``[rows, dim]``
float32 array per model, ``scores`` ``[rows, classes]``. The row chunk length
equals the partition size, so each partition writes whole chunks and no two
tasks ever touch the same chunk.

A partition counts as done only when its manifest entry
``partitions/p<index>.json`` exists; the entry is written atomically (temporary
file + rename) after all of the partition's chunks are written, so a partition
interrupted halfway is computed again. The group's attributes hold the run's
fingerprint (inputs, models, settings), checked before anything is reused.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

MODEL_ARRAYS = ("dnabert", "esm")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class EmbeddingStore:
    """Open or create the store under ``out``; see the module docstring for the layout.

    >>> store = EmbeddingStore.create("out", rows=10, dims={"dnabert": 4, "esm": 6},
    ...                               chunk_rows=4, classes=2, fingerprint={"k": 1})
    >>> store.done_partitions()
    set()
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.path = self.out / "embeddings.zarr"
        self.manifest = self.out / "partitions"

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
    ) -> EmbeddingStore:
        store = cls(out)
        store.manifest.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(store.path, mode="w")
        chunk = max(1, min(chunk_rows, rows))
        group.create_array("ids", shape=(rows,), chunks=(chunk,), dtype=str)
        for name in MODEL_ARRAYS:
            group.create_array(name, shape=(rows, dims[name]), chunks=(chunk, dims[name]),
                               dtype="float32", fill_value=0.0)
        group.create_array("scores", shape=(rows, classes), chunks=(chunk, classes),
                           dtype="float32", fill_value=0.0)
        group.attrs.update({"fingerprint": dict(fingerprint), "chunk_rows": chunk_rows,
                            "rows": rows})
        return store

    def exists(self) -> bool:
        return (self.path / "zarr.json").is_file()

    def group(self, mode: str = "r") -> zarr.Group:
        return zarr.open_group(self.path, mode=mode)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.group().attrs.get("fingerprint", {}))

    def write_partition(
        self, index: int, row_start: int, ids: list[str], arrays: Mapping[str, np.ndarray],
        info: Mapping[str, Any],
    ) -> None:
        """Write one partition's rows, then record it as done."""
        group = self.group("r+")
        stop = row_start + len(ids)
        group["ids"][row_start:stop] = np.asarray(ids, dtype=str)
        for name, values in arrays.items():
            group[name][row_start:stop] = values
        entry = {"partition": index, "row_start": row_start, "rows": len(ids),
                 "finished": time.time(), **info}
        atomic_write_text(self.manifest / f"p{index:07d}.json", json.dumps(entry))

    def done_partitions(self) -> set[int]:
        if not self.manifest.is_dir():
            return set()
        done = set()
        for entry in self.manifest.glob("p*.json"):
            try:
                done.add(int(json.loads(entry.read_text())["partition"]))
            except (ValueError, KeyError, OSError):
                continue  # unreadable entry: the partition is simply computed again
        return done
