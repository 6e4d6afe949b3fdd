"""Samples in flight: a sample waits for a slot until another reaches its writing."""

from __future__ import annotations

import threading

import pytest
from helpers import wait_until

from virnuc_dask.dataflow.sample_slots import SampleSlots
from virnuc_dask.events import ProgressEvent


def _start(slots: SampleSlots, name: str) -> threading.Event:
    started = threading.Event()

    def run() -> None:
        with slots.slot(name, None):
            started.set()

    threading.Thread(target=run, daemon=True).start()
    return started


def test_a_sample_starts_when_another_has_embedded_everything_not_before():
    slots = SampleSlots(limit=1)
    with slots.slot("S1", None) as progress:
        started = _start(slots, "S2")
        progress(ProgressEvent("embed", 3, 5))
        progress(ProgressEvent("write", 1, 4))  # the result files of finished partitions
        assert not started.wait(0.3)  # S1 still embeds: S2 waits
        progress(ProgressEvent("embed", 5, 5))
        wait_until(started.is_set, timeout=10, what="S2 to start")
        progress(ProgressEvent("write", 4, 4))  # freed once (a bounded semaphore)
    wait_until(_start(slots, "S3").is_set, timeout=10, what="S3 to start")


def test_a_sample_that_fails_before_writing_frees_its_slot():
    slots = SampleSlots(limit=1)
    with pytest.raises(ValueError), slots.slot("S1", None):
        raise ValueError("bad input")
    wait_until(_start(slots, "S2").is_set, timeout=10, what="S2 to start")
