"""Scores shared by the samples of a sequencing run: an ORF whose model inputs another
sample of the run has already scored takes that sample's scores instead of being
embedded again (PhiX, adapters, a phage present in every sample are embedded once).

The table lies under the run directory, ``RUN/.run-scores/<models>/``, where
``<models>`` is a digest of what decides a score besides the inputs (both models,
the classifier, the precision): a run with other models never reads another's
scores. Each finished partition of a sample adds one file: the content keys of the
ORFs scored there and their scores (the classifier's float32 output, unchanged).
A content key is the 128-bit BLAKE2b hash of each model's input (the nucleotide slice
for DNABERT-S, the protein for ESM-2), as in-sample dedup hashes them
(:func:`~virnuc_dask.core.orfs.content_hashes`), so two ORFs share a key exactly when
every model would read the same text. The file is named by the SHA-256 of its bytes
(content addressed and checksummed: a file whose bytes do not match its name, a file
cut short by a crash among them, is dropped with a warning, and its ORFs are embedded),
and is written whole under a temporary name and renamed. The embedding task adds it as
soon as it has scored its rows, so the next partition on that device, of any sample,
finds them.

A sample's own store holds every score it uses, taken ones included: a sample resumes,
or is re-run alone (``predict --out RUN/<sample>``), without this table or any other
sample's folder. Only prediction without ``--keep-embeddings`` takes scores (a run that
keeps embeddings needs every vector). Samples in flight at the same moment may both
embed an input neither has finished yet (partitions embedded at the same moment on two
devices); the table then gets it twice, harmlessly.

A worker keeps nothing of the table in memory between partitions: each file is
memory-mapped (its records sorted by key) and searched per partition; its checksum is
checked once per worker process. Files are merged as they accumulate (eight of a level
into one of the next, up to 4M records a file), so a lookup opens a few dozen files
even for a run of many millions of ORFs.

>>> import tempfile
>>> from virnuc_dask.models.registry import MODEL_KEYS
>>> table = RunScores(tempfile.mkdtemp())
>>> keys = input_keys({m: ["ACGT", "GGCA"] for m in MODEL_KEYS})
>>> path = table.publish(keys[:1], np.array([[0.25, 0.75]], dtype=np.float32))
>>> found, scores = table.lookup(keys)
>>> found.tolist(), scores[0].tolist()
([True, False], [0.25, 0.75])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from virnuc_dask.core.orfs import content_hashes
from virnuc_dask.dataflow.copies import RowPlan
from virnuc_dask.models.registry import MODEL_KEYS
from virnuc_dask.rundir import RUN_SCORES

logger = logging.getLogger(__name__)

#: What decides an ORF's scores besides its inputs (keys of the store's fingerprint).
SCORE_IDENTITY = ("esm_model", "dnabert_model", "classifier", "precision", "store_format")
#: The entry of the models' facts (:func:`~virnuc_dask.dataflow.models_on_workers.load_models`)
#: that names a sequencing run's table to the samples' dataflows.
RUN_TABLE = "run_scores"
SUFFIX = ".scores"
MAGIC = b"vnscore1"
HEADER = 16  # MAGIC, then key width and number of classes as little-endian uint32
#: Files of one level merged into one of the next (see :meth:`RunScores.compact`).
FANOUT = 8
#: Records of the largest merged file (40 bytes each with two models and two classes).
MERGED_RECORDS = 1 << 22

_VERIFIED: set[str] = set()  # table files whose checksum this process has checked
_VERIFYING = threading.Lock()


def table_root(run_out: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> Path:
    """The table of a run directory for the models of ``fingerprint``
    (:func:`~virnuc_dask.dataflow.identity.fingerprint`)."""
    identity = json.dumps({k: fingerprint.get(k) for k in SCORE_IDENTITY}, sort_keys=True)
    return Path(run_out) / RUN_SCORES / hashlib.sha256(identity.encode()).hexdigest()[:16]


def input_keys(texts: Mapping[str, Sequence[str]]) -> np.ndarray:
    """One content key per row (bytes, ``16 × models`` wide) from each model's inputs
    (``texts[model][row]``)."""
    hashes = np.concatenate([content_hashes(texts[m]) for m in MODEL_KEYS], axis=1)
    return np.ascontiguousarray(hashes).view(f"S{hashes.shape[1] * 8}").reshape(-1)


def _dtype(width: int, classes: int) -> np.dtype:
    return np.dtype([("key", f"S{width}"), ("scores", "<f4", (classes,))])


class RunScores:
    """The score table in directory ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def publish(self, keys: np.ndarray, scores: np.ndarray) -> Path | None:
        """Add the scores of the rows with ``keys``; the file written (None: no rows, or
        it could not be written: the table only saves work, so that is logged, and the
        partition goes on)."""
        if not len(keys):
            return None
        records = np.zeros(len(keys), dtype=_dtype(keys.dtype.itemsize, scores.shape[1]))
        records["key"] = keys
        records["scores"] = scores
        try:
            path = self._write(records, level=0)
            self.compact()
        except OSError as exc:
            logger.warning("%s: scores not shared with the other samples: %s", self.root, exc)
            return None
        return path

    def _write(self, records: np.ndarray, *, level: int) -> Path:
        """``records`` (duplicate keys dropped, sorted) as a table file of ``level``."""
        _, first = np.unique(records["key"], return_index=True)
        records = records[first]
        width, classes = records.dtype["key"].itemsize, records.dtype["scores"].shape[0]
        data = MAGIC + np.array([width, classes], "<u4").tobytes() + records.tobytes()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{level}-{hashlib.sha256(data).hexdigest()}{SUFFIX}"
        if path.exists():
            return path
        partial = self.root / f".{uuid.uuid4().hex}.partial"
        try:
            partial.write_bytes(data)  # no fsync: a file cut short fails its checksum
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def compact(self) -> None:
        """Merge ``FANOUT`` files of a level into one of the next, level after level, while
        the merged file stays under ``MERGED_RECORDS`` records: a lookup opens a number of
        files that grows with the logarithm of the run's ORFs, and no task holds more
        than ``MERGED_RECORDS`` records. The same files merge into the same bytes, so
        two tasks compacting at once write one file."""
        level = 0
        while True:
            files = sorted(self.root.glob(f"{level}-*{SUFFIX}"))[:FANOUT]
            if len(files) < FANOUT:
                return
            tables = [(p, t) for p in files if (t := self._open(p)) is not None]
            if sum(len(t) for _, t in tables) > MERGED_RECORDS:
                return
            self._write(np.concatenate([np.asarray(t) for _, t in tables]), level=level + 1)
            for path, _ in tables:
                path.unlink(missing_ok=True)
            level += 1

    def _tables(self) -> list[np.ndarray]:
        if not self.root.is_dir():
            return []
        tables = []
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            table = self._open(path)
            if table is not None:
                tables.append(table)
        return tables

    def _open(self, path: Path) -> np.ndarray | None:
        try:
            with _VERIFYING:
                if path.name not in _VERIFIED:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    if path.name.partition("-")[2] != digest + SUFFIX:
                        raise ValueError("its content does not match its checksum (its name)")
                    _VERIFIED.add(path.name)
            with open(path, "rb") as fh:
                head = fh.read(HEADER)
            if head[: len(MAGIC)] != MAGIC:
                raise ValueError("not a score table")
            width, classes = np.frombuffer(head[len(MAGIC) :], "<u4").tolist()
            if path.stat().st_size == HEADER:
                return None
            return np.memmap(path, dtype=_dtype(width, classes), mode="r", offset=HEADER)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("%s: ignored, its ORFs are embedded again: %s", path, exc)
            path.unlink(missing_ok=True)
            return None

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Which of ``keys`` the table holds, and their scores (rows not found: zeros;
        None when nothing was found)."""
        found = np.zeros(len(keys), dtype=bool)
        scores = None
        for table in self._tables():
            if table.dtype["key"].itemsize != keys.dtype.itemsize or not len(keys):
                continue
            stored = table["key"]
            pos = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
            hit = ~found & (stored[pos] == keys)
            if not hit.any():
                continue
            if scores is None:
                scores = np.zeros((len(keys), table.dtype["scores"].shape[0]), np.float32)
            scores[hit] = table["scores"][pos[hit]]
            found |= hit
        return found, scores


@dataclasses.dataclass(frozen=True)
class Taken:
    """Rows of a partition that take their scores from the run's table: ``rows``
    (a mask), ``scores`` (valid where ``rows``), ``keys`` (every row's content key)."""

    rows: np.ndarray
    scores: np.ndarray
    keys: np.ndarray

    @property
    def count(self) -> int:
        return int(self.rows.sum())


def take_scores(
    root: str, texts: Mapping[str, Sequence[str]], plan: RowPlan, classes: int
) -> tuple[RowPlan, Taken]:
    """Find the rows of a partition that ``plan`` would score here whose inputs the
    table at ``root`` holds; the plan without embedding them, and those rows.

    A taken row is still embedded by a model when another row scored here takes that
    model's vector from it (in-sample dedup).
    """
    keys = input_keys(texts)
    candidates = np.flatnonzero(~plan.copies)
    taken = np.zeros(len(keys), dtype=bool)
    scores = np.zeros((len(keys), classes), dtype=np.float32)
    found, values = RunScores(root).lookup(keys[candidates])
    if values is not None:
        taken[candidates[found]] = True
        scores[candidates[found]] = values[found]
    users = ~taken & ~plan.copies
    embed = {}
    for m in MODEL_KEYS:
        needed = np.zeros(len(keys), dtype=bool)
        needed[plan.take[m][users]] = True
        embed[m] = plan.embed[m] & (~taken | needed)
    return dataclasses.replace(plan, embed=embed), Taken(taken, scores, keys)
