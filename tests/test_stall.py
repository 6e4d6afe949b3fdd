"""The stuck-worker bound, and device faults told apart from record faults."""

from __future__ import annotations

import threading

import pytest
import torch

from virnuc_dask.errors import ConfigError
from virnuc_dask.worker.faults import InjectedFault, is_device_fault
from virnuc_dask.worker.stall import StallWatch, watch_forwards


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watched(floor: float = 60.0) -> tuple[StallWatch, Clock]:
    clock = Clock()
    return StallWatch(floor=floor, clock=clock), clock


def forwards(watch: StallWatch, clock: Clock, model: str, seconds: list[float]) -> None:
    for s in seconds:
        watch.started(model)
        clock.now += s
        watch.finished(model)


def test_an_idle_worker_is_never_stuck():
    watch, clock = watched()
    clock.now = 10_000
    assert watch.overdue() is None
    watch.begin("partition 1")
    watch.end()
    clock.now += 10_000
    assert watch.overdue() is None


def test_before_any_rate_is_known_the_floor_is_the_bound():
    watch, clock = watched(floor=60)
    watch.begin("partition 1")
    watch.started("esm")
    clock.now = 60
    assert watch.overdue() is None
    clock.now = 61
    why = watch.overdue()
    assert why.startswith("no progress for 61 s in partition 1 (a forward of ESM-2 has not")
    assert "no earlier forward to compare with" in why


def test_the_bound_grows_with_the_slowest_recent_forward_of_that_model():
    watch, clock = watched(floor=60)
    watch.begin("partition 7")
    forwards(watch, clock, "dnabert", [0.1] * 10)
    forwards(watch, clock, "esm", [4.0, 5.0, 4.5])
    assert watch.bound("esm") == 100.0  # 20 x 5 s
    assert watch.bound("dnabert") == 60.0  # the floor
    assert watch.bound(None) == 100.0  # between forwards: any model's
    watch.started("esm")
    clock.now += 99
    assert watch.overdue() is None
    clock.now += 2
    assert "20x the slowest recent forward; the slowest of its last 3 took 5.00 s" in (
        watch.overdue()
    )


def test_only_the_recent_window_counts():
    watch = StallWatch(floor=1, window=4, clock=(clock := Clock()))
    watch.begin("p")
    forwards(watch, clock, "esm", [50.0] + [1.0] * 4)
    assert watch.bound("esm") == 20.0


def test_time_between_tasks_is_not_an_interval():
    watch, clock = watched(floor=1)
    watch.begin("partition 1")
    forwards(watch, clock, "esm", [1.0])
    watch.end()
    clock.now += 3600  # idle: the scheduler had nothing for this worker
    watch.begin("partition 2")
    forwards(watch, clock, "esm", [1.0])
    assert watch.bound("esm") == 20.0


def test_forward_hooks_tell_the_watch():
    watch, clock = watched(floor=5)
    model = torch.nn.Linear(2, 2)
    watch_forwards(watch, {"esm": model})
    watch.begin("p")
    clock.now = 2
    model(torch.zeros(1, 2))
    assert watch.bound("esm") == 40.0


@pytest.mark.parametrize(
    ("exc", "device"),
    [
        (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA error: unspecified launch failure"), True),
        (RuntimeError("CUDA error: uncorrectable ECC error encountered"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), True),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (torch.AcceleratorError("CUDA error: out of memory"), False),
        (IndexError("index out of range in self"), False),
        (RuntimeError("shape mismatch"), False),
        (ValueError("CUDA error: in a user's own message"), False),
    ],
)
def test_device_faults_are_told_from_record_faults(exc, device):
    assert is_device_fault(exc) is device


def test_an_injected_device_error_is_sticky_after_n_forwards():
    model = torch.nn.Linear(2, 2)
    InjectedFault.parse("device-error:2").install({"esm": model})
    x = torch.zeros(1, 2)
    model(x)
    model(x)
    for _ in range(3):
        with pytest.raises(torch.AcceleratorError, match="illegal memory access") as raised:
            model(x)
        assert is_device_fault(raised.value)


def test_an_injected_hang_blocks_the_forward():
    model = torch.nn.Linear(2, 2)
    InjectedFault.parse("hang:0").install({"esm": model})
    thread = threading.Thread(target=model, args=(torch.zeros(1, 2),), daemon=True)
    thread.start()
    thread.join(timeout=1)
    assert thread.is_alive()


@pytest.mark.parametrize("text", ["hang", "crash:3", "hang:x", "device-error:-1"])
def test_a_malformed_injection_setting_is_refused(text):
    with pytest.raises(ConfigError, match="VIRNUC_DASK_INJECT_FAULT"):
        InjectedFault.parse(text)


def test_no_injection_without_the_variable():
    assert InjectedFault.from_environment({}) is None
    assert InjectedFault.from_environment({"VIRNUC_DASK_INJECT_FAULT": "hang:4"}).after == 4
