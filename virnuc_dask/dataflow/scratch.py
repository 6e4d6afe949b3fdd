"""The run's scratch beside the store: ORF tables in columnar files and the dedup index.

Workers do not hold ORF tables between tasks. The task that reads and translates a
block writes its table here (``.scratch/b<block>/``) and returns only counts; the
tasks that need rows later (embedding partitions, result files) read them back:

- ``ids``, ``nucleotide``, ``protein``: each the UTF-8 bytes of all the block's ORFs
  joined (``<name>.data.npy``) with their end offsets (``<name>.ends.npy``), memory
  mapped, so that a slice of rows reads only those rows' bytes;
- ``reads.pkl``: the block's :class:`~virnuc_dask.core.orfs.ReadInfo` list (for the
  result files);
- ``<model>.hash.npy``, ``<model>.row.npy``, ``<model>.bounds.npy`` (with dedup): the
  128-bit BLAKE2b content hash of each ORF's model input (nucleotide slice for
  DNABERT-S, protein for ESM-2) and its row in the block, grouped by hash bucket;
  ``bounds[k]:bounds[k+1]`` are bucket ``k``'s entries.

With dedup, the blocks are taken in waves (consecutive blocks, in input order), and
:func:`dedup_bucket` turns one bucket of one wave's blocks into the pairs ``(row,
source)`` of the rows whose input occurred first at ``source`` (global rows, input
order), written to ``.scratch/dedup/<model>/<bucket>.w<wave>.{row,source}.npy`` sorted by
row. It decides against the bucket's first copies of the earlier waves, which the
previous wave's call left in ``<bucket>.seen.w<wave>.{hash,row}.npy``, so a wave's rows
are decided as soon as its blocks are read, exactly as over the whole input at once.
:func:`sources` gives any row range its source rows from those files.  Each bucket
holds about ``1/buckets`` of the rows, so no task holds all hashes of a run.

Everything here is derived from the inputs alone and rebuilt by every run; it is
removed when a run ends.  128-bit hashes: the chance of any collision among 10^9
distinct sequences is below 10^-20.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from virnuc_dask.core.orfs import BlockOrfs, ReadInfo, content_hashes
from virnuc_dask.models.registry import EMBEDDING_MODELS
from virnuc_dask.rundir import SCRATCH

# numpy parses an .npy header with ``ast.literal_eval``; CPython releases without the fix for
# python/cpython#106905 (3.11.7 among them) raise "SystemError: AST constructor recursion depth
# mismatch" when two threads of one worker parse at once. The headers are tiny: one at a time.
_NPY_HEADER_LOCK = threading.Lock()


def _load(path: Path, *, mmap: bool = True) -> np.ndarray:
    with _NPY_HEADER_LOCK:
        return np.load(path, mmap_mode="r" if mmap else None)


COLUMNS = ("ids", "nucleotide", "protein")
#: model -> the ORF column it embeds
MODEL_INPUTS = {m.key: m.embeds for m in EMBEDDING_MODELS}


def scratch_dir(out: str | os.PathLike[str]) -> Path:
    return Path(out) / SCRATCH


def reset(out: str | os.PathLike[str]) -> Path:
    """An empty scratch directory under ``out``."""
    root = scratch_dir(out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def remove(out: str | os.PathLike[str], *, attempts: int = 20) -> None:
    """Remove the scratch directory. A run that stops on an error may leave tasks
    writing into it for a moment (on a cluster it does not own); they create no
    directory above their block's, so once it is gone they fail instead of writing."""
    root = scratch_dir(out)
    for _ in range(attempts):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        time.sleep(0.05)  # a file created while the tree was being removed


def _block_dir(root: Path, block: int) -> Path:
    return root / f"b{block:07d}"


def _save(path: Path, array: np.ndarray) -> None:
    # Through Python's own write: a full disk is an OSError naming the file (numpy's
    # tofile reports only a short write).
    buffer = io.BytesIO()
    np.save(buffer, array)
    _write(path, buffer.getbuffer())


def _write(path: Path, data) -> None:
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise


def write_table(root: str | os.PathLike[str], table: BlockOrfs, *, buckets: int = 0) -> None:
    """Write ``table``'s columns (and, ``buckets`` > 0, its hash buckets) under ``root``."""
    where = _block_dir(Path(root), table.block)
    where.mkdir(exist_ok=True)  # not its parents: a removed scratch stays removed
    columns = {
        "ids": [o.id for o in table.orfs],
        "nucleotide": [o.nucleotide for o in table.orfs],
        "protein": [o.protein for o in table.orfs],
    }
    for name, values in columns.items():
        encoded = [v.encode() for v in values]
        ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        _save(where / f"{name}.data.npy", np.frombuffer(b"".join(encoded), dtype=np.uint8))
        _save(where / f"{name}.ends.npy", ends)
    _write(where / "reads.pkl", pickle.dumps(table.reads, protocol=pickle.HIGHEST_PROTOCOL))
    if buckets:
        for model, column in MODEL_INPUTS.items():
            hashes = content_hashes(columns[column])
            bucket = (hashes[:, 0] % np.uint64(buckets)).astype(np.int64)
            order = np.argsort(bucket, kind="stable")
            _save(where / f"{model}.hash.npy", hashes[order])
            _save(where / f"{model}.row.npy", order.astype(np.int64))
            _save(
                where / f"{model}.bounds.npy",
                np.searchsorted(bucket[order], np.arange(buckets + 1)).astype(np.int64),
            )


def read_column(
    root: str | os.PathLike[str], block: int, name: str, lo: int = 0, hi: int | None = None
) -> list[str]:
    """Rows ``[lo, hi)`` of one column of a block's table."""
    where = _block_dir(Path(root), block)
    ends = _load(where / f"{name}.ends.npy")
    hi = len(ends) if hi is None else hi
    if hi <= lo:
        return []
    start = int(ends[lo - 1]) if lo else 0
    stops = np.asarray(ends[lo:hi]) - start
    data = _load(where / f"{name}.data.npy")
    raw = bytes(data[start : start + int(stops[-1])])
    text = raw.decode()
    if len(text) == len(raw):  # ASCII: byte offsets are character offsets
        starts = np.concatenate(([0], stops[:-1]))
        return [text[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
    starts = np.concatenate(([0], stops[:-1]))
    return [raw[a:b].decode() for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]


def read_reads(root: str | os.PathLike[str], block: int) -> list[ReadInfo]:
    with open(_block_dir(Path(root), block) / "reads.pkl", "rb") as fh:
        return pickle.load(fh)


def dedup_bucket(
    root: str | os.PathLike[str],
    model: str,
    bucket: int,
    offsets: Sequence[int],
    *,
    first_block: int = 0,
    wave: int = 0,
    previous: object = None,
) -> tuple[int, int]:
    """Find the repeated inputs of one bucket among the blocks of one wave; (rows, unique
    rows).

    ``offsets[i]``: the global row of block ``first_block + i``'s first ORF. A row repeats
    when its input occurred at an earlier row of the wave or of an earlier wave: those
    are the first copies of the bucket up to the previous wave, which that wave's call
    left (``previous``, its result, only orders the calls). Writes the wave's ``(row,
    source)`` pairs of repeated rows, sorted by row, and the first copies up to this wave.
    """
    root = Path(root)
    target = root / "dedup" / model
    hashes, rows = [np.zeros((0, 2), np.uint64)], [np.zeros(0, np.int64)]
    if wave:
        hashes.append(_load(target / f"{bucket:05d}.seen.w{wave - 1}.hash.npy", mmap=False))
        rows.append(_load(target / f"{bucket:05d}.seen.w{wave - 1}.row.npy", mmap=False))
    carried = sum(len(r) for r in rows)
    for block, offset in enumerate(offsets, first_block):
        where = _block_dir(root, block)
        bounds = _load(where / f"{model}.bounds.npy", mmap=False)
        lo, hi = int(bounds[bucket]), int(bounds[bucket + 1])
        if hi > lo:
            hashes.append(_load(where / f"{model}.hash.npy")[lo:hi])
            rows.append(_load(where / f"{model}.row.npy")[lo:hi] + offset)
    h, r = np.concatenate(hashes), np.concatenate(rows)
    order = np.lexsort((r, h[:, 1], h[:, 0]))
    h, r = h[order], r[order]
    first = np.ones(len(r), dtype=bool)
    first[1:] = (h[1:] != h[:-1]).any(axis=1)
    source = r[np.maximum.accumulate(np.where(first, np.arange(len(r)), 0))]
    in_wave = order >= carried  # the earlier waves' rows all come before this wave's
    repeated = ~first & in_wave
    pair_rows, pair_sources = r[repeated], source[repeated]
    by_row = np.argsort(pair_rows, kind="stable")
    target.parent.mkdir(exist_ok=True)  # not the scratch itself: see remove()
    target.mkdir(exist_ok=True)
    _save(target / f"{bucket:05d}.w{wave}.row.npy", pair_rows[by_row])
    _save(target / f"{bucket:05d}.w{wave}.source.npy", pair_sources[by_row])
    _save(target / f"{bucket:05d}.seen.w{wave}.hash.npy", h[first])
    _save(target / f"{bucket:05d}.seen.w{wave}.row.npy", r[first])
    return int(in_wave.sum()), int((first & in_wave).sum())


def sources(
    root: str | os.PathLike[str],
    model: str,
    buckets: int,
    lo: int,
    hi: int,
    waves: Sequence[int] | None = None,
) -> np.ndarray:
    """For rows ``[lo, hi)``: the global row whose embedding each row takes (itself, or
    the first earlier row with the same input); ``waves``: the waves holding those rows
    (None: every wave decided so far)."""
    out = np.arange(lo, hi, dtype=np.int64)
    target = Path(root) / "dedup" / model
    if waves is None:
        waves = sorted(int(p.name.split(".")[1][1:]) for p in target.glob(f"{0:05d}.w*.row.npy"))
    for wave in waves:
        for bucket in range(buckets):
            rows = _load(target / f"{bucket:05d}.w{wave}.row.npy")
            a, b = np.searchsorted(rows, [lo, hi])
            if b > a:
                src = _load(target / f"{bucket:05d}.w{wave}.source.npy")
                out[np.asarray(rows[a:b]) - lo] = src[a:b]
    return out
