"""A finished partition: what the embedding task returns, the manifest entry that
records the partition as done (``embeddings.zarr/partitions/p<index>.json``), and what
the progress display and the run summary count.

The JSON form is flat: the per-model statistics sit under the model's key; ``checksum``
is the SHA-256 of the rest (sorted keys), checked when the entry is read back.

>>> from virnuc_dask.models import MODEL_KEYS
>>> first, last = MODEL_KEYS[0], MODEL_KEYS[-1]
>>> result = PartitionResult(partition=3, row_start=600, rows=2, worker="tcp://w1",
...     models={first: ModelStats(sequences=2, rows=2, unique=2),
...             last: ModelStats(sequences=1, rows=2, unique=1)},
...     failed=(FailedRecord(row=601, id="r1_1F", stage=last, error="E: x"),))
>>> data = result.to_json()
>>> data[last]["unique"], data["failed"][0]["row"]
(1, 601)
>>> PartitionResult.from_json(data) == result
True
>>> PartitionResult.from_json({**data, "rows": 3})
Traceback (most recent call last):
...
ValueError: checksum does not match the entry's content
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from virnuc_dask.models import MODEL_KEYS


@dataclasses.dataclass(frozen=True)
class FailedRecord:
    """An ORF that could not be embedded (its rows in the store hold zeros)."""

    row: int  # global row
    id: str
    stage: str  # the model key
    error: str  # ``Type: first line of the message``


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """What one model did for one partition: the batch runner's counters summed over
    its calls, and the rows they cover."""

    sequences: int = 0  # embedded here (the first copy of each input)
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    recomputed_fp32: int = 0
    seconds: float = 0.0
    prepare_seconds: float = 0.0
    wait_seconds: float = 0.0
    rows: int = 0  # the partition's ORFs, copies included
    unique: int = 0  # rows to embed here
    budget_tokens: int | None = None  # the worker's learned token budget afterwards

    @classmethod
    def total(cls, counters: Iterable[Mapping[str, float]], **rest: Any) -> ModelStats:
        """The sum of batch-runner counters (``StageStats.as_dict()``), with ``rest``."""
        names = {f.name for f in dataclasses.fields(cls)} - set(rest)
        summed: dict[str, Any] = {}
        for counter in counters:
            for key, value in counter.items():
                if key in names:
                    summed[key] = summed.get(key, 0) + value
        return cls(**summed, **rest)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelStats:
        names = {f.name for f in dataclasses.fields(cls)}
        stats = {k: v for k, v in data.items() if k in names}
        stats.setdefault("rows", data.get("sequences", 0))  # entries that predate ``rows``
        return cls(**stats)


@dataclasses.dataclass(frozen=True)
class PartitionResult:
    """One embedded partition; ``store_id`` and ``finished`` are set when it is recorded."""

    partition: int
    row_start: int
    rows: int
    worker: str
    models: Mapping[str, ModelStats]
    failed: tuple[FailedRecord, ...] = ()
    store_seconds: float = 0.0
    classify_seconds: float = 0.0
    store_id: str | None = None
    finished: float | None = None
    chunks: tuple[str, ...] = ()  # the chunk files written, relative to the store
    from_run: int = 0  # rows whose scores another sample of the run computed

    @property
    def all_failed(self) -> bool:
        return bool(self.rows) and len(self.failed) == self.rows

    def to_json(self) -> dict[str, Any]:
        data = {
            "partition": self.partition,
            "row_start": self.row_start,
            "rows": self.rows,
            "store_id": self.store_id,
            "finished": self.finished,
            "failed": [dataclasses.asdict(f) for f in self.failed],
            "worker": self.worker,
            "store_seconds": self.store_seconds,
            "classify_seconds": self.classify_seconds,
            "chunks": list(self.chunks),
            "from_run": self.from_run,
        }
        for key, stats in self.models.items():
            data[key] = dataclasses.asdict(stats)
        data["checksum"] = _checksum(data)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartitionResult:
        """From :meth:`to_json`'s form; raises KeyError/TypeError/ValueError on others
        (ValueError also when the checksum is missing or does not match)."""
        if data.get("checksum") != _checksum(data):
            raise ValueError("checksum does not match the entry's content")
        return cls(
            partition=int(data["partition"]),
            row_start=int(data["row_start"]),
            rows=int(data["rows"]),
            worker=str(data["worker"]),
            models={k: ModelStats.from_json(data[k]) for k in MODEL_KEYS if k in data},
            failed=tuple(FailedRecord(**f) for f in data.get("failed", ())),
            store_seconds=float(data.get("store_seconds", 0.0)),
            classify_seconds=float(data.get("classify_seconds", 0.0)),
            store_id=data.get("store_id"),
            finished=data.get("finished"),
            chunks=tuple(data.get("chunks", ())),
            from_run=int(data.get("from_run", 0)),
        )


def _checksum(data: Mapping[str, Any]) -> str:
    content = {k: v for k, v in data.items() if k != "checksum"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def failed_rows(entries: Iterable[PartitionResult]) -> dict[int, tuple[str, str]]:
    """Failed ORFs of the entries as {global row: (stage, error)}."""
    return {f.row: (f.stage, f.error) for entry in entries for f in entry.failed}
