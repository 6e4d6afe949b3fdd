"""Which device a worker embeds on: decided once, when its models load.

A worker is *started for a GPU* when NVML lists GPUs on its host or
``CUDA_VISIBLE_DEVICES`` names some. Such a worker must be able to use one:
a CPU-only torch wheel, or a driver older than the wheel's CUDA, would otherwise
run ESM-2 3B on the CPU in fp32, about a hundred times slower, without a word.
That is an error (:class:`DeviceError`) unless the CPU was asked for
(``device: cpu``).

Several workers of one host may see the same GPUs (a ``LocalCluster`` from the
API, ``dask worker`` started by hand without ``CUDA_VISIBLE_DEVICES``). Each
worker claims one device with a host-wide lock file named after the device's
UUID, trying its visible devices in order: dask-cuda gives each worker its own
device first in ``CUDA_VISIBLE_DEVICES``, so there every worker gets its first
choice; plain workers that all see ``0,1,...`` spread over the devices. A
worker that finds every device taken refuses, saying how to start one worker
per GPU. The lock is released when the worker's models are torn down or its
process ends (the operating system drops it).

Nothing here initialises CUDA except through ``torch.cuda`` calls made on the
worker that will use the device.

>>> probe = DeviceProbe(nvml_gpus=0, visible=None, cuda_available=False,
...                     cuda_devices=0, torch_version="2.13.0", cuda_build=None)
>>> decide("auto", probe).type
'cpu'
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import filelock
import torch

from virnuc_dask.errors import DeviceError

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")


@dataclasses.dataclass(frozen=True)
class DeviceProbe:
    """What a worker process sees of the host's GPUs."""

    nvml_gpus: int  # GPUs NVML lists on the host (0: none, no driver or no pynvml)
    visible: tuple[str, ...] | None  # CUDA_VISIBLE_DEVICES entries; None when unset
    cuda_available: bool  # torch.cuda.is_available()
    cuda_devices: int  # torch.cuda.device_count()
    torch_version: str
    cuda_build: str | None  # torch.version.cuda: None for a CPU-only wheel
    driver: str | None = None  # NVML's driver version
    nvml_error: str | None = None

    @property
    def started_for_gpu(self) -> bool:
        return self.nvml_gpus > 0 or bool(self.visible)

    def describe_gpus(self) -> str:
        if self.visible:
            return f"CUDA_VISIBLE_DEVICES={','.join(self.visible)}"
        return f"{self.nvml_gpus} GPU(s) listed by NVML"


def parse_visible(value: str | None) -> tuple[str, ...] | None:
    """``CUDA_VISIBLE_DEVICES`` as entries; ``""`` and ``-1`` hide every device."""
    if value is None:
        return None
    entries = tuple(e.strip() for e in value.split(",") if e.strip())
    return () if not entries or entries[0] == "-1" else entries


def nvml_facts() -> tuple[int, str | None, str | None]:
    """(GPUs, driver version, error) from NVML; no CUDA context is created."""
    try:
        import pynvml
    except ImportError:
        return 0, None, "pynvml is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return 0, None, f"NVML: {exc}"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        return (
            pynvml.nvmlDeviceGetCount(),
            (driver.decode() if isinstance(driver, bytes) else str(driver)),
            None,
        )
    except pynvml.NVMLError as exc:
        return 0, None, f"NVML: {exc}"
    finally:
        pynvml.nvmlShutdown()


def nvml_capability(entry: str) -> tuple[int, int] | None:
    """Compute capability of the GPU ``entry`` (an NVML index, or a ``GPU-``/``MIG-``
    UUID as in ``CUDA_VISIBLE_DEVICES``) from NVML: no CUDA context is created. None
    without NVML or that GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if entry.startswith(("GPU-", "MIG-")):
            handle = pynvml.nvmlDeviceGetHandleByUUID(entry)
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return int(major), int(minor)
    except (pynvml.NVMLError, ValueError):
        return None
    finally:
        pynvml.nvmlShutdown()


def probe() -> DeviceProbe:
    """This process's view (asks the CUDA runtime how many devices torch can use)."""
    gpus, driver, error = nvml_facts()
    available = torch.cuda.is_available()
    return DeviceProbe(
        nvml_gpus=gpus,
        visible=parse_visible(os.environ.get("CUDA_VISIBLE_DEVICES")),
        cuda_available=available,
        cuda_devices=torch.cuda.device_count() if available else 0,
        torch_version=torch.__version__,
        cuda_build=torch.version.cuda,
        driver=driver,
        nvml_error=error,
    )


def decide(requested: str, facts: DeviceProbe) -> torch.device:
    """``cpu`` or ``cuda`` (which device: :func:`claim_device`) for a worker seeing ``facts``.

    ``requested``: ``auto`` (a GPU when the worker was started for one, and then it
    must work), ``cuda`` (a GPU, always) or ``cpu``.
    """
    if requested not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if facts.cuda_available and facts.cuda_devices > 0:
        return torch.device("cuda")
    if requested == "auto" and not facts.started_for_gpu:
        return torch.device("cpu")
    if facts.cuda_build is None:
        why = f"torch {facts.torch_version} is a CPU-only build"
        fix = (
            "install a CUDA build of torch (pip install torch --index-url "
            "https://download.pytorch.org/whl/cu<version>)"
        )
    else:
        why = (
            f"torch {facts.torch_version} (built for CUDA {facts.cuda_build}) cannot use "
            f"them"
            + (f" with driver {facts.driver}" if facts.driver else "")
            + ": the driver may be older than the build needs, or the devices busy "
            "or hidden"
        )
        fix = (
            "install a torch build matching the driver (`nvidia-smi` shows the CUDA "
            "version it supports)"
        )
    seen = facts.describe_gpus() if facts.started_for_gpu else "no GPU visible"
    raise DeviceError(
        f"started for GPUs ({seen}) but {why}; {fix}, or pass --device cpu to embed on the CPU"
    )


def pick_device(requested: str = "auto") -> torch.device:
    """The device this process would embed on (:func:`decide`; no lock taken)."""
    device = decide(requested, probe())
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else device


def lock_dir() -> Path:
    """Host-wide directory of device locks of this user."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"virnuc-dask-devices-{uid}"


@dataclasses.dataclass
class DeviceClaim:
    """The device a worker holds: ``index`` among its visible devices, ``name`` its id."""

    index: int
    name: str
    lock: filelock.BaseFileLock | None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def claim_device(
    names: Sequence[str], *, directory: Path | None = None, host: str | None = None
) -> DeviceClaim:
    """Hold the first of ``names`` (device ids in visible order) no other worker holds.

    Raises :class:`DeviceError` when every one is held.
    """
    if not names:
        raise DeviceError("no CUDA device to claim")
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        lock = filelock.FileLock(
            str(directory / f"{safe}.lock"), timeout=0, thread_local=False, is_singleton=False
        )
        try:
            lock.acquire()
        except filelock.Timeout:
            continue
        return DeviceClaim(index, name, lock)
    raise DeviceError(
        f"all {len(names)} GPU(s) this worker sees on {host or socket.gethostname()} are "
        "held by other virnuc-dask workers: run one worker per GPU (the default local "
        "cluster or `dask cuda worker` do; for `dask worker` by hand set "
        "CUDA_VISIBLE_DEVICES=<one id> for each), or start fewer workers"
    )


def device_names(count: int) -> list[str]:
    """Stable ids of torch's CUDA devices ``0..count-1`` (UUIDs where torch gives them)."""
    names = []
    for i in range(count):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        names.append(f"GPU-{uuid}" if uuid is not None else f"cuda{i}")
    return names


def describe_device(device: torch.device) -> dict[str, object]:
    """Name, compute capability and memory of ``device`` (just ``cpu`` for the CPU)."""
    if device.type != "cuda":
        return {"device": "cpu", "name": "cpu"}
    props = torch.cuda.get_device_properties(device)
    return {
        "device": str(device),
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_bytes": int(props.total_memory),
    }
