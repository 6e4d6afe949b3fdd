"""Labelled rows of the embedding store, and batches streamed from it.

The store (:mod:`virnuc_dask.dataflow.store`) holds one row per ORF, in input order,
chunked along the rows. Training adds two ``int8`` arrays of the same chunking:
``labels`` (1 viral, 0 other) and ``split`` (0 training, 1 validation, -1 not used: a
record that could not be embedded).

Batches never hold more than a window of store chunks: each epoch visits the chunks in
an order drawn from ``(seed, epoch)``, reads ``window`` chunks at a time, and shuffles
the training rows of the window (plus the rows left over from the previous window)
into batches. Memory is ``window * chunk_rows`` rows, whatever the number of rows.
"""

from __future__ import annotations

import array
import random
from collections.abc import Iterator

import numpy as np
import zarr

from virnuc_dask.dataflow.store import read_rows
from virnuc_dask.models import MODEL_KEYS

__all__ = [
    "TRAIN",
    "UNUSED",
    "VALIDATION",
    "chunk_rows",
    "train_batches",
    "validation_rows",
    "validation_split",
]

TRAIN, VALIDATION, UNUSED = 0, 1, -1


def validation_split(usable: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``split`` values for rows, given which rows are ``usable``.

    As the original: ``random.seed(seed)``, the indices of the rows shuffled with
    ``random.shuffle``, the first ``int(n * fraction)`` held out for validation. Here the
    indices are those of the usable rows (in the original: all rows; it has no failed
    records), kept in an ``array`` (8 bytes per row) rather than a list.
    """
    indices = array.array("q")
    indices.frombytes(np.flatnonzero(usable).astype(np.int64).tobytes())
    random.Random(seed).shuffle(indices)
    held_out = int(len(indices) * fraction)
    split = np.full(len(usable), UNUSED, dtype=np.int8)
    split[np.frombuffer(indices, dtype=np.int64)] = TRAIN
    split[np.frombuffer(indices, dtype=np.int64)[:held_out]] = VALIDATION
    return split


def chunk_rows(group: zarr.Group) -> int:
    return int(group["split"].chunks[0])


def _read_chunk(
    group: zarr.Group, chunk: int, size: int, want: int
) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = chunk * size, min((chunk + 1) * size, group["split"].shape[0])
    keep = np.flatnonzero(group["split"][lo:hi] == want)
    if not len(keep):
        width = sum(group[name].shape[1] for name in MODEL_KEYS)
        return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
    # Through the dedup sources: a copy of an input embedded once reads its first row.
    features = np.concatenate([read_rows(group, name, lo, hi)[keep] for name in MODEL_KEYS], axis=1)
    return features, group["labels"][lo:hi][keep].astype(np.int64)


def train_batches(
    group: zarr.Group, *, batch_size: int, window: int, seed: int, epoch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) batches of the training rows for ``epoch`` (module docstring).

    A last batch of one row is dropped: batch normalisation cannot train on it.
    """
    rows = group["split"].shape[0]
    size = chunk_rows(group)
    chunks = -(-rows // size)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(chunks)
    carry_x = np.zeros((0, sum(group[n].shape[1] for n in MODEL_KEYS)), np.float32)
    carry_y = np.zeros(0, np.int64)
    for start in range(0, chunks, window):
        pieces = [_read_chunk(group, int(c), size, TRAIN) for c in order[start : start + window]]
        x = np.concatenate([carry_x, *(p[0] for p in pieces)])
        y = np.concatenate([carry_y, *(p[1] for p in pieces)])
        perm = rng.permutation(len(y))
        full = len(y) // batch_size * batch_size
        for b in range(0, full, batch_size):
            idx = perm[b : b + batch_size]
            yield x[idx], y[idx]
        carry_x, carry_y = x[perm[full:]], y[perm[full:]]
    if len(carry_y) > 1:
        yield carry_x, carry_y


def validation_rows(group: zarr.Group) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of the validation rows, one store chunk at a time, in row order."""
    size = chunk_rows(group)
    for chunk in range(-(-group["split"].shape[0] // size)):
        x, y = _read_chunk(group, chunk, size, VALIDATION)
        if len(y):
            yield x, y
