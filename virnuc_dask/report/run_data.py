"""A finished run read back for the report: per-read rows, the ORF scores of the reads
drawn, counts and score histograms, streamed from the result files so that memory does
not grow with the run."""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from virnuc_dask.errors import ReportError
from virnuc_dask.rundir import HIGHEST, PREDICTIONS, READS, SUMMARY

CALLS = ("virus", "others", "no_orf", "failed")
CALL_LABELS = {"virus": "virus", "others": "others", "no_orf": "no ORF", "failed": "failed"}
COLOURS = {"virus": "#d62728", "others": "#1f3b8c", "no_orf": "#9e9e9e", "failed": "#ff9f1c"}
BINS = np.linspace(0.0, 1.0, 51)


@dataclasses.dataclass(frozen=True)
class ReadRow:
    """One row of ``read_predictions.tsv``."""

    id: str
    length: int
    chunks: int
    chunks_with_orf: int
    orfs: int
    virus_chunks: int
    max_virus_score: float | None
    prediction: str


@dataclasses.dataclass(frozen=True)
class OrfScore:
    """One ORF of a plotted read: its chunk number, frame, call and scores."""

    chunk: int
    frame: str
    call: str
    others: float
    virus: float


@dataclasses.dataclass
class RunData:
    """What the report shows: counts, histograms, and the selected reads with their ORFs."""

    summary: dict[str, Any]
    length: int
    calls: dict[str, int]
    chunk_calls: dict[str, int]
    orf_hist: dict[str, np.ndarray]
    read_hist: np.ndarray
    reads: list[ReadRow]
    orfs: dict[str, list[OrfScore]]


def _open_lines(path: Path, header: str) -> Iterable[list[str]]:
    if not path.is_file():
        raise ReportError(
            f"{path}: not found; is {path.parent} the --out of a finished virnuc-dask predict run?"
        )
    with open(path) as fh:
        first = fh.readline().rstrip("\n")
        if first != header:
            raise ReportError(f"{path}: line 1: expected the header {header!r}, found {first!r}")
        for n, line in enumerate(fh, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != header.count("\t") + 1:
                raise ReportError(
                    f"{path}: line {n}: expected {header.count(chr(9)) + 1} "
                    f"tab-separated fields, found {len(fields)}"
                )
            yield fields


def _read_row(f: list[str]) -> ReadRow:
    return ReadRow(
        f[0],
        int(f[1]),
        int(f[2]),
        int(f[3]),
        int(f[4]),
        int(f[5]),
        None if f[6] == "NA" else float(f[6]),
        f[7],
    )


def _split_orf_id(orf_id: str) -> tuple[str, int, str] | None:
    """``read_chunk_3F2`` -> ``("read", 3, "F2")``; None if the id is not of that form."""
    read, sep, rest = orf_id.rpartition("_chunk_")
    if not sep or len(rest) < 3 or not rest[:-2].isdigit():
        return None
    return read, int(rest[:-2]), rest[-2:]


def load_run(
    out: str | os.PathLike[str],
    *,
    top: int = 10,
    ids: Sequence[str] = (),
    length: int | None = None,
) -> RunData:
    """Stream the result files of ``out``; select ``ids``, else the ``top`` reads.

    The top reads: reads called virus before the others, then the most chunks with
    an ORF (the longest tracks), then the highest best P(virus); reads without ORF never.
    """
    out = Path(out)
    summary: dict[str, Any] = {}
    if (out / SUMMARY).is_file():
        try:
            summary = json.loads((out / SUMMARY).read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{out / SUMMARY}: not valid JSON: {exc}") from None
    length = length or summary.get("length")
    if not length:
        raise ReportError(f"{out}: no {SUMMARY} with the chunk length; pass --length")
    calls = dict.fromkeys(CALLS, 0)
    read_hist = np.zeros(len(BINS) - 1, dtype=np.int64)
    wanted = set(ids)
    chosen: dict[str, ReadRow] = {}
    heap: list[tuple[bool, int, float, int, ReadRow]] = []
    scores: list[float] = []
    for n, fields in enumerate(_open_lines(out / READS, _header(READS))):
        row = _read_row(fields)
        calls[row.prediction] = calls.get(row.prediction, 0) + 1
        if row.max_virus_score is not None:
            scores.append(row.max_virus_score)
            if len(scores) >= 1 << 16:
                read_hist += np.histogram(scores, BINS)[0]
                scores.clear()
        if wanted:
            if row.id in wanted:
                chosen[row.id] = row
        elif row.max_virus_score is not None and top > 0:
            item = (row.prediction == "virus", row.chunks_with_orf, row.max_virus_score, -n, row)
            if len(heap) < top:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)
    read_hist += np.histogram(scores, BINS)[0]
    if wanted:
        missing = [i for i in ids if i not in chosen]
        if missing:
            raise ReportError(f"{out / READS}: no read with id {', '.join(map(repr, missing))}")
        reads = [chosen[i] for i in dict.fromkeys(ids)]
    else:
        reads = [item[-1] for item in sorted(heap, reverse=True)]
    selected = {r.id for r in reads}
    orfs: dict[str, list[OrfScore]] = {r.id: [] for r in reads}
    orf_hist = {
        "virus": np.zeros(len(BINS) - 1, np.int64),
        "others": np.zeros(len(BINS) - 1, np.int64),
    }
    pending: dict[str, list[float]] = {"virus": [], "others": []}
    chunk_calls = {"virus": 0, "others": 0}
    for fields in _open_lines(out / PREDICTIONS, _header(PREDICTIONS)):
        orf_id, call, s1, s2 = fields
        bucket = pending.setdefault(call, [])
        bucket.append(float(s2))
        if len(bucket) >= 1 << 16:
            orf_hist.setdefault(call, np.zeros(len(BINS) - 1, np.int64))
            orf_hist[call] += np.histogram(bucket, BINS)[0]
            bucket.clear()
        parts = _split_orf_id(orf_id)
        if parts is not None and parts[0] in selected:
            orfs[parts[0]].append(OrfScore(parts[1], parts[2], call, float(s1), float(s2)))
    for call, bucket in pending.items():
        orf_hist.setdefault(call, np.zeros(len(BINS) - 1, np.int64))
        orf_hist[call] += np.histogram(bucket, BINS)[0]
    highest = out / HIGHEST
    if highest.is_file():
        for fields in _open_lines(highest, "Modified_ID\tIs_Virus"):
            chunk_calls["virus" if fields[1] == "True" else "others"] += 1
    return RunData(summary, int(length), calls, chunk_calls, orf_hist, read_hist, reads, orfs)


def _header(name: str) -> str:
    from virnuc_dask.dataflow.outputs import HEADERS

    return HEADERS[name].rstrip("\n")
