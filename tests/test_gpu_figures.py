"""NVML figures of the claimed GPU (by UUID), and the utilisation the summary reports:
the mean over the samples taken while embedding.

NVML is what only a GPU node has: :class:`FakeNvml` stands in for ``pynvml`` with two
GPUs whose utilisation follows a script, the second one being the worker's.
"""

from __future__ import annotations

import types

import pytest

from virnuc_dask.dataflow.dashboard import gpu_metrics
from virnuc_dask.worker.gpu_figures import GpuSampler
from virnuc_dask.worker.stall import StallWatch


class FakeNvml:
    class NVMLError(Exception):
        pass

    def __init__(self, utilization: dict[str, list[int]]) -> None:
        self.uuids = list(utilization)
        self.script = {uuid: iter(rates) for uuid, rates in utilization.items()}
        self.started = 0

    def nvmlInit(self) -> None:
        self.started += 1

    def nvmlShutdown(self) -> None:
        self.started -= 1

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid not in self.uuids:
            raise self.NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return f"GPU {self.uuids.index(handle)}".encode()

    def nvmlDeviceGetMemoryInfo(self, handle: str):
        index = self.uuids.index(handle)
        return types.SimpleNamespace(total=80_000_000_000, used=(index + 1) * 1_000_000_000)

    def nvmlDeviceGetUtilizationRates(self, handle: str):
        return types.SimpleNamespace(gpu=next(self.script[handle]), memory=0)


def test_the_claimed_gpu_is_found_by_uuid_not_the_first_visible():
    nvml = FakeNvml({"GPU-aaaa": [99] * 5, "GPU-bbbb": [10, 20, 30]})
    sampler = GpuSampler.open("GPU-bbbb", nvml=nvml)
    sampler.sample(embedding=True)
    figures = sampler.figures()
    assert figures["name"] == "GPU 1" and figures["uuid"] == "GPU-bbbb"
    assert figures["utilization"] == 10 and figures["memory_used"] == 2_000_000_000
    sampler.close()
    assert nvml.started == 0


def test_a_gpu_nvml_does_not_know_gives_no_sampler():
    nvml = FakeNvml({"GPU-aaaa": [1]})
    assert GpuSampler.open("GPU-cccc", nvml=nvml) is None


def test_utilisation_is_the_mean_over_the_embedding_not_the_last_sample():
    """Samples while idle (loading, between partitions, after the last one) do not count:
    the run ends idle, and its last heartbeat says 0 %."""
    nvml = FakeNvml({"GPU-aaaa": [0, 80, 90, 100, 0, 0]})
    sampler = GpuSampler.open("GPU-aaaa", nvml=nvml)
    watch = StallWatch(floor=60)
    sampler.sample(embedding=watch.holding)  # 0 %: loading
    watch.begin("partition 0")
    for _ in range(3):
        sampler.sample(embedding=watch.holding)  # 80, 90, 100
    watch.end()
    sampler.sample(embedding=watch.holding)
    sampler.sample(embedding=watch.holding)  # 0 %: done
    figures = sampler.figures()
    assert figures["utilization"] == pytest.approx(90.0)
    assert figures["utilization_samples"] == 3 and figures["utilization_last"] == 0


def test_the_summary_prefers_the_claimed_gpus_figures_to_the_heartbeat():
    heartbeat = {  # distributed's sample: the first visible GPU, at the last heartbeat
        "metrics": {"gpu": {"utilization": 0, "memory-used": 5}},
        "gpu": {"name": "someone else's GPU", "memory-total": 6},
    }
    claimed = {
        "name": "GPU 1",
        "uuid": "GPU-bbbb",
        "utilization": 91.5,
        "utilization_samples": 40,
        "utilization_last": 0,
        "memory_used": 2,
        "memory_total": 80,
    }
    figures = gpu_metrics(heartbeat, {"reserved": 1, "peak": 2}, claimed)
    assert figures["name"] == "GPU 1" and figures["utilization"] == 91.5
    assert figures["uuid"] == "GPU-bbbb" and figures["memory_total"] == 80
    assert figures["process_memory_peak"] == 2
    assert gpu_metrics({}, None, claimed)["utilization"] == 91.5
