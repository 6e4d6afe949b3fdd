"""Progress for the terminal: a rich live display on a TTY, periodic log lines otherwise.

>>> with TerminalProgress(enabled=False) as progress:
...     progress.update("embed", 1, 4)
"""

from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

logger = logging.getLogger(__name__)

STAGES = {"read": "reading + translating", "embed": "embedding partitions",
          "classify": "classifying", "write": "writing results"}


class TerminalProgress:
    """Per-stage progress; ``update(stage, done, total)`` is the pipeline's callback."""

    def __init__(self, *, enabled: bool | None = None, interval: float = 30.0) -> None:
        console = Console(stderr=True)
        self.live = console.is_terminal if enabled is None else enabled
        self.interval = interval
        self._last = 0.0
        self._tasks: dict[str, TaskID] = {}
        self._progress = Progress(
            TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        ) if self.live else None

    def __enter__(self) -> TerminalProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._progress.add_task(STAGES.get(stage, stage),
                                                             total=total)
            self._progress.update(self._tasks[stage], completed=done, total=total)
            return
        now = time.monotonic()
        if done == total or now - self._last >= self.interval:
            self._last = now
            logger.info("%s: %d/%d", STAGES.get(stage, stage), done, total)
            sys.stderr.flush()
