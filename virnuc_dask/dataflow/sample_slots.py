"""Which samples of a sequencing run are in flight: at most ``limit`` samples reading or
embedding at once; a sample whose partitions are all embedded (its last result files
still being written) frees its slot for the next sample, so that the next sample's
reading (and then its partitions) is under way while the last partitions of the others
are embedded and their results written, and the devices do not wait between samples.

The embedding tasks of every sample in flight share the cluster's devices; the
scheduler runs them in the order they were submitted (each sample keeps about two
partitions per worker submitted), so samples interleave partition by partition and a
small sample's partitions go between a large one's.

>>> from virnuc_dask.events import ProgressEvent
>>> slots = SampleSlots(limit=1)
>>> seen = []
>>> with slots.slot("S1", seen.append) as progress:
...     progress(ProgressEvent("read", 1, 1))
...     progress(ProgressEvent("embed", 2, 2))  # S1's partitions are embedded: free
...     with slots.slot("S2", None):  # does not wait
...         pass
>>> [(e.sample, e.stage) for e in seen]
[('S1', 'read'), ('S1', 'embed')]
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator

from virnuc_dask.events import Progress, ProgressEvent


class SampleSlots:
    """At most ``limit`` samples still embedding (see the module docstring)."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def slot(self, sample: str, progress: Progress | None) -> Iterator[Progress]:
        """Wait for a free slot; the sample's progress callback, which names the sample
        in each event it forwards to ``progress`` and frees the slot once every partition
        is embedded (an ``embed`` event with ``done == total``; result files written as
        partitions finish do not count) or the last result file is written, or when the
        block ends."""
        self._free.acquire()
        freed = threading.Event()
        lock = threading.Lock()

        def free() -> None:
            with lock:
                if not freed.is_set():
                    freed.set()
                    self._free.release()

        def forward(event: ProgressEvent) -> None:
            if event.stage in ("embed", "write") and event.done >= event.total:
                free()
            if progress is not None:
                progress(dataclasses.replace(event, sample=sample))

        try:
            yield forward
        finally:
            free()
