"""A run's display: a rich view updated live on a terminal, or the same state as one log
line every N seconds elsewhere (a batch job's log). :class:`~.progress.TerminalProgress`
(one run) and :class:`~.sample_progress.SheetProgress` (a sequencing run) are such
displays."""

from __future__ import annotations

import logging
import threading

from rich.console import Console
from rich.live import Live


class LiveDisplay:
    """Live on a terminal (``enabled`` None: when stderr is one), else :meth:`line` logged
    every ``interval`` seconds and once at the end; subclasses give ``__rich__`` (the
    live view) and :meth:`line`. A context manager: the display runs inside the block."""

    def __init__(self, *, enabled: bool | None, interval: float, console: Console | None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal if enabled is None else enabled
        if interval <= 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval}")
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None

    def line(self) -> str:
        raise NotImplementedError

    def __enter__(self):
        if self.live:
            self._live = Live(
                self,
                console=self.console,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=True,
            )
            self._live.start()
        else:
            self._thread = threading.Thread(
                target=self._log_every_interval, name="virnuc-progress", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
        if self._thread is not None:
            self._thread.join()
            self._log.info("%s", self.line())

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)  # the display's own module

    def _log_every_interval(self) -> None:
        while not self._stop.wait(self.interval):
            self._log.info("%s", self.line())
