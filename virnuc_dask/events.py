"""Progress events: what a run reports to a display (or an API caller) as it goes.

A run calls its ``progress`` callback with one :class:`ProgressEvent` per step; every
field but ``stage``, ``done`` and ``total`` is set only by the steps it belongs to.

>>> seen = []
>>> emit = reporter(seen.append)
>>> emit("read", 2, 2, reads=30, orfs=400)
>>> seen[0].counts()
{'reads': 30, 'orfs': 400}
>>> emit("read", 2, 2, rows=3)
Traceback (most recent call last):
...
TypeError: ProgressEvent.__init__() got an unexpected keyword argument 'rows'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from virnuc_dask.partition_result import PartitionResult


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` units of ``stage`` (blocks, partitions, epochs, or 0/1)."""

    stage: str
    done: int
    total: int
    precision: str | None = None  # models: what the workers compute in
    device: str | None = None  # models: the first worker's device
    reads: int | None = None  # read, write
    orfs: int | None = None  # read, classify
    orfs_total: int | None = None  # the opening embed event: ORFs of the run
    orfs_reused: int | None = None  # ... of them finished by an earlier run
    partitions: tuple[PartitionResult, ...] = ()  # embed: the partitions just finished
    loss: float | None = None  # train: the epoch's training loss
    val_loss: float | None = None
    accuracy: float | None = None
    sample: str | None = None  # a sequencing run: the sample the event belongs to
    status: str | None = None  # samples: waiting, running, complete, partial or failed

    def counts(self) -> dict[str, int | str]:
        """The whole-number and text fields that are set, by name."""
        skip = {"stage", "done", "total", "partitions"}
        return {
            f.name: value
            for f in dataclasses.fields(self)
            if f.name not in skip
            and isinstance(value := getattr(self, f.name), int | str)
            and not isinstance(value, bool)
        }


Progress = Callable[[ProgressEvent], None]


def reporter(progress: Progress | None) -> Callable[..., None]:
    """``emit(stage, done, total, **fields)``: an event to ``progress`` (or nowhere)."""

    def emit(stage: str, done: int, total: int, **fields: object) -> None:
        event = ProgressEvent(stage, done, total, **fields)
        if progress is not None:
            progress(event)

    return emit
