"""Which device a worker takes: GPU workers that cannot use their GPU are refused; workers
sharing a multi-GPU node each claim their own device, or refuse."""

from __future__ import annotations

import threading

import pytest

from virnuc_dask.worker.device import (
    DeviceError,
    DeviceProbe,
    claim_device,
    decide,
    parse_visible,
)


def facts(**changes) -> DeviceProbe:
    values = {
        "nvml_gpus": 0,
        "visible": None,
        "cuda_available": False,
        "cuda_devices": 0,
        "torch_version": "2.13.0+cpu",
        "cuda_build": None,
        "driver": None,
    }
    return DeviceProbe(**{**values, **changes})


def test_no_gpu_anywhere_is_the_cpu():
    assert decide("auto", facts()).type == "cpu"
    assert decide("cpu", facts()).type == "cpu"
    assert decide("auto", facts(visible=())).type == "cpu"  # CUDA_VISIBLE_DEVICES=""


def test_a_usable_gpu_is_taken():
    gpu = facts(nvml_gpus=2, cuda_available=True, cuda_devices=2, cuda_build="12.8")
    assert decide("auto", gpu).type == "cuda"
    assert decide("cuda", gpu).type == "cuda"
    assert decide("cpu", gpu).type == "cpu"  # asked for


@pytest.mark.parametrize(
    "seen", [{"nvml_gpus": 4}, {"visible": ("2",)}, {"visible": ("GPU-8a1c",), "nvml_gpus": 8}]
)
def test_cpu_only_torch_on_a_gpu_worker_is_an_error(seen):
    with pytest.raises(
        DeviceError,
        match="started for GPUs .* torch 2.13.0\\+cpu is a "
        "CPU-only build; install a CUDA build .* or pass --device cpu",
    ):
        decide("auto", facts(**seen))
    assert decide("cpu", facts(**seen)).type == "cpu"


def test_driver_too_old_for_the_build_is_an_error():
    old = facts(nvml_gpus=1, cuda_build="12.8", driver="470.57", torch_version="2.13.0")
    with pytest.raises(
        DeviceError, match="built for CUDA 12.8\\) cannot use them with driver 470.57"
    ):
        decide("auto", old)


def test_cuda_asked_without_any_gpu_is_an_error():
    with pytest.raises(DeviceError, match="no GPU visible"):
        decide("cuda", facts())
    with pytest.raises(DeviceError, match="device must be one of auto, cuda, cpu"):
        decide("gpu", facts())


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("", ()),
        ("-1", ()),
        ("0", ("0",)),
        ("1, 3", ("1", "3")),
        ("GPU-aa,GPU-bb", ("GPU-aa", "GPU-bb")),
    ],
)
def test_cuda_visible_devices(value, expected):
    assert parse_visible(value) == expected


# -- several workers on one multi-GPU node --------------------------------------------------


def claim_all(orders: list[list[str]], tmp_path) -> list[object]:
    """Each list is one worker's visible devices in order; all claim at the same time."""
    results: list[object] = [None] * len(orders)
    barrier = threading.Barrier(len(orders))

    def worker(n: int) -> None:
        barrier.wait()
        try:
            results[n] = claim_device(orders[n], directory=tmp_path, host="node1")
        except DeviceError as exc:
            results[n] = exc

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(orders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_plain_workers_seeing_every_gpu_spread_over_them(tmp_path):
    names = ["GPU-a", "GPU-b", "GPU-c"]
    claims = claim_all([names] * 3, tmp_path)
    assert sorted(c.name for c in claims) == names
    assert sorted(c.index for c in claims) == [0, 1, 2]  # torch device cuda:<index>


def test_more_workers_than_gpus_refuse_with_how_to_fix(tmp_path):
    claims = claim_all([["GPU-a", "GPU-b"]] * 3, tmp_path)
    refused = [c for c in claims if isinstance(c, DeviceError)]
    held = [c for c in claims if not isinstance(c, DeviceError)]
    assert len(refused) == 1 and sorted(c.name for c in held) == ["GPU-a", "GPU-b"]
    assert "all 2 GPU(s) this worker sees on node1 are held by other virnuc-dask workers" in str(
        refused[0]
    )
    assert "CUDA_VISIBLE_DEVICES=<one id>" in str(refused[0])
    # a device given back (a worker closed) can be taken again
    held[0].release()
    again = claim_device(["GPU-a", "GPU-b"], directory=tmp_path)
    assert again.name == held[0].name


def test_dask_cuda_workers_each_get_their_first_device(tmp_path):
    """dask-cuda rotates CUDA_VISIBLE_DEVICES so that each worker's own GPU comes first."""
    names = ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]
    rotated = [names[i:] + names[:i] for i in range(4)]
    claims = claim_all(rotated, tmp_path)
    assert [c.name for c in claims] == names and [c.index for c in claims] == [0] * 4


# -- GPUs of a local cluster --------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, gpus, expected",
    [
        (None, "0,1", ["0", "1"]),
        ("2,3", "0", ["2"]),  # a job's allocation: --gpus counts within it
        ("2,3", "1,0", ["3", "2"]),
        ("GPU-aa,GPU-bb", "1", ["GPU-bb"]),
        ("2,3", "GPU-cc", ["GPU-cc"]),
        ("2,3", None, ["2", "3"]),
        ("", None, []),
    ],
)
def test_gpus_option_counts_within_cuda_visible_devices(monkeypatch, env, gpus, expected):
    from virnuc_dask.cluster.workers import visible_gpus

    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus(gpus) == expected


def test_gpus_outside_the_allocation_are_refused(monkeypatch):
    from virnuc_dask.cluster.workers import visible_gpus
    from virnuc_dask.config import ConfigError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(ConfigError, match="no GPU 2 among the 2 this job may use"):
        visible_gpus("2")


def test_dask_cuda_workers_keep_the_project_preload(monkeypatch):
    """LocalCUDACluster gives its workers an explicit preload list; ours must be in it."""
    import sys
    import types

    import virnuc_dask.cluster.start as start
    from virnuc_dask.config import load_settings

    seen = {}

    class FakeCluster:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setitem(
        sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=FakeCluster)
    )
    monkeypatch.setattr(start, "visible_gpus", lambda gpus=None: ["0", "1"])
    start._start_local(load_settings(inputs=[], overrides={"workers": 1}), None)
    assert "virnuc_dask.cluster.start" in seen["preload"]
    assert seen["CUDA_VISIBLE_DEVICES"] == "0" and seen["resources"] == {"GPU": 1}
