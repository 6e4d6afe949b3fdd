"""Batch preparation overlapped with the forward: a prefetch thread prepares the next
batches (tokenising, padding, and on CUDA pinning and copying on a side stream) while
the current one runs; the compute stream waits for each copy before it uses it."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from virnuc_dask.models.adapter import Batch

PREFETCH_DEPTH = 2


class Timings(Protocol):
    prepare_seconds: float  # in the preparing thread
    wait_seconds: float  # the consumer waiting for a prepared batch


@dataclasses.dataclass
class Prepared:
    idx: np.ndarray
    tensors: Batch
    ready: Any = None  # a CUDA event recorded after the copy, or None


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(
    items: Iterable[np.ndarray],
    prepare: Callable[[np.ndarray], Prepared],
    stats: Timings,
    *,
    enabled: bool,
) -> Iterator[Prepared]:
    """``prepare(idx)`` for every batch of ``items``, in a background thread when enabled."""
    if not enabled:
        for idx in items:
            t = time.perf_counter()
            prepared = prepare(idx)
            stats.prepare_seconds += time.perf_counter() - t
            yield prepared
        return
    q: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for idx in items:
                t = time.perf_counter()
                prepared = prepare(idx)
                stats.prepare_seconds += time.perf_counter() - t
                if not put(prepared):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
            put(_Failed(exc))
            return
        put(done)

    thread = threading.Thread(target=produce, name="virnuc-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            t = time.perf_counter()
            item = q.get()
            stats.wait_seconds += time.perf_counter() - t
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


def to_device(host: Batch, device: torch.device, idx: np.ndarray, side_stream: Any) -> Prepared:
    """Host tensors onto ``device``: pinned and copied on a side stream on CUDA."""
    if device.type != "cuda":
        return Prepared(idx, host)
    with torch.cuda.stream(side_stream):
        tensors = {k: v.pin_memory().to(device, non_blocking=True) for k, v in host.items()}
        ready = torch.cuda.Event()
        ready.record(side_stream)
    return Prepared(idx, tensors, ready)


def use(prepared: Prepared, device: torch.device) -> Batch:
    """Make the compute stream wait for ``prepared``'s copy and own its memory."""
    if prepared.ready is not None:
        stream = torch.cuda.current_stream(device)
        stream.wait_event(prepared.ready)
        for tensor in prepared.tensors.values():
            tensor.record_stream(stream)
    return prepared.tensors
