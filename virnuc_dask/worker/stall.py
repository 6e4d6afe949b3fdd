"""A worker whose device stopped making progress: the bound, measured against its own rate.

A kernel that never returns (a stuck GPU, a driver fault) blocks the task's thread
while the worker's event loop goes on answering heartbeats, so Dask never declares
the worker dead. :class:`StallWatch` is told when a task takes the device
(:meth:`~StallWatch.begin`), when a model's forward starts and returns, and when the
task lets the device go; the worker's event loop asks :meth:`~StallWatch.overdue`
every few seconds.

The bound is ``max(floor, FACTOR x slowest of this worker's last WINDOW intervals of
the same model)``, where an interval is the time from the previous sign of progress
(the task taking the device, a forward returning) to a forward returning. The floor
(setting ``stuck_after``) covers the first batches of a model, whose rate is not known
yet and which pay for lazy CUDA initialisation; ``FACTOR`` leaves room for a batch
far longer than the recent ones (the longest sequences come first, a GPU shared with
another process, a host under load) without waiting hours on a device that is gone.

>>> clock = iter([0.0, 1.0, 2.0, 500.0]).__next__
>>> watch = StallWatch(floor=300.0, clock=clock)
>>> watch.begin("partition 3")
>>> watch.started("esm")
>>> watch.finished("esm")
>>> watch.overdue() is None
True
>>> watch.overdue().split(";")[0]
'no progress for 499 s in partition 3 (ESM-2 forward returned last'
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from virnuc_dask.models import MODEL_NAMES

# A forward may take this many times the slowest recent one of the same model.
FACTOR = 20.0
# Recent intervals kept per model.
WINDOW = 32
# How often the worker's event loop asks whether the task holding the device is stuck.
POLL_S = 2.0


class StallWatch:
    """Progress of the task holding a worker's device; see the module's docstring."""

    def __init__(
        self,
        *,
        floor: float,
        factor: float = FACTOR,
        window: int = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.floor = floor
        self.factor = factor
        self.clock = clock
        self._lock = threading.Lock()
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=window)
        )
        self._what: str | None = None  # the task holding the device; None: idle
        self._model: str | None = None  # the model of the forward running now
        self._last_model: str | None = None
        self._since = 0.0  # the last sign of progress

    def begin(self, what: str) -> None:
        """A task took the device (``what`` names it in the message)."""
        with self._lock:
            self._what, self._model, self._last_model = what, None, None
            self._since = self.clock()

    @property
    def holding(self) -> bool:
        """Whether a task holds the device now."""
        with self._lock:
            return self._what is not None

    def end(self) -> None:
        """The task let the device go."""
        with self._lock:
            self._what = self._model = None

    def started(self, model: str) -> None:
        """A forward of ``model`` starts (a model key: ``esm``, ``dnabert``)."""
        with self._lock:
            self._model = model

    def finished(self, model: str) -> None:
        """A forward of ``model`` returned."""
        with self._lock:
            now = self.clock()
            if self._what is not None:
                self._recent[model].append(now - self._since)
            self._since = now
            self._model, self._last_model = None, model

    def bound(self, model: str | None) -> float:
        """Seconds without progress allowed while ``model`` runs (or between forwards)."""
        with self._lock:
            return self._bound(model)

    def _bound(self, model: str | None) -> float:
        recent = self._recent.get(model) if model else None
        if not recent and model is None:
            recent = [t for times in self._recent.values() for t in times]
        slowest = max(recent) if recent else 0.0
        return max(self.floor, self.factor * slowest)

    def overdue(self) -> str | None:
        """Why the task holding the device is stuck; None while it makes progress."""
        with self._lock:
            if self._what is None:
                return None
            waited = self.clock() - self._since
            model = self._model
            bound = self._bound(model)
            if waited <= bound:
                return None
            recent = self._recent.get(model or self._last_model or "")
            doing = (
                f"a forward of {MODEL_NAMES.get(model, model)} has not returned"
                if model
                else (
                    f"{MODEL_NAMES.get(self._last_model, self._last_model)} forward returned last"
                    if self._last_model
                    else "no forward started yet"
                )
            )
            rate = (
                f"the slowest of its last {len(recent)} took {max(recent):.2f} s"
                if recent
                else "no earlier forward to compare with"
            )
            return (
                f"no progress for {waited:.0f} s in {self._what} ({doing}; bound "
                f"{bound:.0f} s: the larger of stuck_after {self.floor:g} s and "
                f"{self.factor:g}x the slowest recent forward; {rate})"
            )


def watch_forwards(watch: StallWatch, models: Mapping[str, torch.nn.Module]) -> None:
    """Tell ``watch`` when a forward of each of ``models`` (by model key) starts and returns."""
    for key, model in models.items():

        def started(module: torch.nn.Module, args: Any, key: str = key) -> None:
            watch.started(key)

        def finished(module: torch.nn.Module, args: Any, out: Any, key: str = key) -> None:
            watch.finished(key)

        model.register_forward_pre_hook(started)
        model.register_forward_hook(finished)
