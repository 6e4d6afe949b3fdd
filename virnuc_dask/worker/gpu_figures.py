"""NVML figures of the GPU a worker claimed, sampled while it embeds.

Dask's own NVML diagnostics read the first device of ``CUDA_VISIBLE_DEVICES``; a
worker that sees several GPUs and claimed another one (a plain ``dask worker`` on a
node of GPUs, see :func:`.device.claim_device`) would report a neighbour's figures.
:class:`GpuSampler` finds the claimed GPU by its UUID and keeps the utilisation of
every sample taken while a task held the device, so that the run summary reports the
mean over the embedding, not whatever the last heartbeat saw.

NVML is read without creating a CUDA context. ``nvml`` is the ``pynvml`` module
(another object with its functions stands in for it where no GPU is).

>>> sampler = GpuSampler.open("GPU-0000", nvml=None)
>>> sampler is None
True
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuSampler:
    """Utilisation and memory of one GPU (by UUID), sampled on demand."""

    def __init__(self, nvml: Any, handle: Any, uuid: str) -> None:
        self.nvml = nvml
        self.handle = handle
        self.uuid = uuid
        self.name = _text(nvml.nvmlDeviceGetName(handle))
        self.memory_total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        self._lock = threading.Lock()
        self._busy: list[float] = []  # utilisation (%) of samples taken while embedding
        self._last: dict[str, Any] = {}

    @classmethod
    def open(cls, uuid: str, *, nvml: Any = "pynvml") -> GpuSampler | None:
        """The sampler of the GPU ``uuid`` (``GPU-...`` or ``MIG-...``, as NVML and
        :func:`.device.device_names` spell it); None without NVML or that GPU."""
        if nvml == "pynvml":
            try:
                import pynvml as nvml
            except ImportError:
                return None
        if nvml is None:
            return None
        try:
            nvml.nvmlInit()
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
            return cls(nvml, handle, uuid)
        except nvml.NVMLError as exc:
            logger.warning("no NVML figures for GPU %s: %s", uuid, exc)
            return None

    def sample(self, *, embedding: bool) -> dict[str, Any] | None:
        """Read utilisation and memory now; ``embedding``: a task holds the device, the
        sample counts towards the mean. None when NVML stopped answering."""
        try:
            rates = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        except self.nvml.NVMLError as exc:
            logger.debug("NVML sample of %s failed: %s", self.uuid, exc)
            return None
        with self._lock:
            self._last = {"utilization": int(rates.gpu), "memory_used": int(memory.used)}
            if embedding:
                self._busy.append(float(rates.gpu))
            return dict(self._last)

    def figures(self) -> dict[str, Any]:
        """Name, UUID, memory, the last sample, and the mean utilisation over the samples
        taken while embedding (None before the first)."""
        with self._lock:
            busy = list(self._busy)
            last = dict(self._last)
        return {
            "name": self.name,
            "uuid": self.uuid,
            "memory_total": self.memory_total,
            "memory_used": last.get("memory_used"),
            "utilization_last": last.get("utilization"),
            "utilization": sum(busy) / len(busy) if busy else None,
            "utilization_samples": len(busy),
        }

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError as exc:
            logger.debug("NVML shutdown: %s", exc)
