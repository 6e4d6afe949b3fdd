"""Progress of a sequencing run (``predict --samplesheet``): one line per sample with its
stage and counts, live on a terminal, a log line every N seconds otherwise.

The run reports each sample's status (``samples`` events: waiting, running, then
complete, partial or failed) and forwards the events of each sample's dataflow with the
sample's name (:class:`~virnuc_dask.events.ProgressEvent` ``sample``); a sample's stage is
that of its latest event.

>>> with SheetProgress(enabled=False, interval=3600) as progress:
...     progress(ProgressEvent("samples", 0, 2, sample="S1", status="waiting"))
...     progress(ProgressEvent("samples", 0, 2, sample="S2", status="waiting"))
...     progress(ProgressEvent("samples", 0, 2, sample="S1", status="running"))
...     progress(ProgressEvent("read", 2, 2, reads=80, orfs=311, sample="S1"))
>>> progress.line()
'samples 0/2 done | S1 reading 2/2 blocks, 80 reads, 311 ORFs | S2 waiting'
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from virnuc_dask.cli.live_display import LiveDisplay
from virnuc_dask.events import ProgressEvent
from virnuc_dask.formatting import clock

logger = logging.getLogger(__name__)

#: A sample's stage by the stage of its dataflow's latest event.
STAGE_WORDS = {
    "models": "starting",
    "read": "reading",
    "embed": "embedding",
    "classify": "embedding",
    "write": "writing",
}
FINISHED = ("complete", "partial", "failed")
STYLES = {"complete": "green", "partial": "yellow", "failed": "red", "waiting": "dim"}


@dataclasses.dataclass
class SampleLine:
    """What the display knows of one sample."""

    name: str
    status: str = "waiting"
    stage: str = "waiting"
    blocks: tuple[int, int] | None = None  # of the stage, reading or writing
    reads: int | None = None
    orfs: int | None = None
    partitions: tuple[int, int] | None = None
    reused: int = 0  # ORFs of partitions finished by an earlier run
    embedded: int = 0  # ORFs of partitions finished by this run
    from_run: int = 0
    started: float | None = None
    finished: float | None = None

    def record(self, event: ProgressEvent, now: float) -> None:
        if event.stage == "samples":
            self.status = event.status or self.status
            if self.status == "running" and self.started is None:
                self.started = now
            if self.status in FINISHED:
                self.finished, self.stage = now, self.status
                self.reads = event.reads if event.reads is not None else self.reads
            return
        embedding = self.partitions is not None and self.partitions[0] < self.partitions[1]
        if not (event.stage == "write" and embedding):  # files of finished partitions
            self.stage = STAGE_WORDS.get(event.stage, event.stage)
            if event.stage in ("read", "write"):
                self.blocks = (event.done, event.total)
        if event.reads is not None and event.stage in ("read", "write"):
            self.reads = event.reads
        if event.stage == "read" and event.orfs is not None:
            self.orfs = event.orfs
        if event.stage == "embed":
            self.partitions = (event.done, event.total)
            if event.orfs_total is not None:
                self.orfs = event.orfs_total
                self.reused = event.orfs_reused or 0
            for entry in event.partitions:
                self.embedded += entry.rows
                self.from_run += entry.from_run

    def doing(self) -> str:
        """The stage in words: ``embedding 3/5 partitions``."""
        if self.stage in ("reading", "writing") and self.blocks:
            return f"{self.stage} {self.blocks[0]}/{self.blocks[1]} blocks"
        if self.stage == "embedding" and self.partitions:
            return f"embedding {self.partitions[0]}/{self.partitions[1]} partitions"
        return self.stage

    def counts(self) -> str:
        parts = []
        if self.reads is not None:
            parts.append(f"{self.reads:,} reads")
        if self.orfs is not None:
            parts.append(f"{self.orfs:,} ORFs")
        if self.reused:
            parts.append(f"{self.reused:,} reused")
        if self.from_run:
            parts.append(f"{self.from_run:,} from other samples")
        return ", ".join(parts)

    def elapsed(self, now: float) -> str:
        return "" if self.started is None else clock((self.finished or now) - self.started)


class SheetProgress(LiveDisplay):
    """The progress callback of a sequencing run: a live table of the samples on a
    terminal, log lines elsewhere (``enabled`` None: live when stderr is a terminal;
    ``interval``: seconds between log lines).

    Usage::

        with SheetProgress(interval=60) as progress:
            result = predict_samples(settings, client, sheet=sheet, progress=progress)
    """

    def __init__(
        self,
        *,
        enabled: bool | None = None,
        interval: float = 30.0,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(enabled=enabled, interval=interval, console=console)
        self.clock = clock
        self.samples: dict[str, SampleLine] = {}
        self.total = 0
        self.lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if event.sample is None:
            return
        with self.lock:
            if event.stage == "samples":
                self.total = event.total
            line = self.samples.setdefault(event.sample, SampleLine(event.sample))
            line.record(event, self.clock())
        if not self.live and event.stage == "samples" and event.status in FINISHED:
            logger.info("sample %s %s (%s)", line.name, line.status, line.counts())

    def done(self) -> int:
        return sum(s.status in FINISHED for s in self.samples.values())

    def table(self) -> Table:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for name in ("sample", "stage", "counts", "elapsed"):
            table.add_column(
                name,
                no_wrap=True,
                style="bold" if name == "sample" else None,
                justify="right" if name == "elapsed" else "left",
            )
        now = self.clock()
        with self.lock:
            for s in self.samples.values():
                mark = {"complete": "✓ ", "partial": "! ", "failed": "✗ "}.get(s.status, "  ")
                table.add_row(
                    mark + s.name,
                    Text(s.doing(), style=STYLES.get(s.status, "")),
                    s.counts(),
                    s.elapsed(now),
                )
        return table

    def __rich__(self) -> Group:
        with self.lock:
            head = f"samples: {self.done()}/{self.total} done"
        return Group(Text(head, style="bold"), self.table())

    def line(self) -> str:
        """The samples' state as one log line."""
        with self.lock:
            parts = [f"samples {self.done()}/{self.total} done"]
            for s in self.samples.values():
                counts = s.counts()
                parts.append(f"{s.name} {s.doing()}" + (f", {counts}" if counts else ""))
        return " | ".join(parts)


def sheet_display_factory(verbosity: str, interval: float) -> Callable[[Any], SheetProgress]:
    """The display of a ``predict --samplesheet`` run: given the run's cluster, its
    workers' log records forwarded at ``verbosity`` and a :class:`SheetProgress` (live
    unless ``quiet``)."""

    def display(cluster: Any) -> SheetProgress:
        from virnuc_dask.cli.logs import forward_worker_logs

        forward_worker_logs(cluster.client, verbosity)
        return SheetProgress(interval=interval, enabled=False if verbosity == "quiet" else None)

    return display
