"""Faults of a worker's device: telling them from faults of a record, and injecting them.

After an Xid/ECC error or an illegal address every kernel on that device fails until
the process ends (``torch.AcceleratorError: CUDA error: ...``). Such an error says
nothing about the records of the batch: :func:`is_device_fault` tells it apart, and
the worker that sees it leaves the run (:meth:`.plugin.ModelPlugin.holding_device`)
instead of recording every record as failed. Running out of memory is not a device
fault: the batch runner splits the batch.

Testing and debugging the handling (on any machine, the CPU included): a worker
started with the environment variable ``VIRNUC_DASK_INJECT_FAULT`` set to

- ``device-error:N`` raises ``torch.AcceleratorError("CUDA error: an illegal memory
  access was encountered")`` from every model forward after its first ``N``;
- ``hang:N`` blocks forever in its forward after the first ``N`` (a kernel that
  never returns).

Forwards of both embedding models count, on that worker only.

>>> is_device_fault(torch.AcceleratorError("CUDA error: an illegal memory access"))
True
>>> is_device_fault(torch.OutOfMemoryError("CUDA out of memory"))
False
>>> InjectedFault.parse("hang:3")
InjectedFault(kind='hang', after=3)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import torch

from virnuc_dask.errors import ConfigError
from virnuc_dask.worker.batch_runner import is_oom

logger = logging.getLogger(__name__)

INJECT_VARIABLE = "VIRNUC_DASK_INJECT_FAULT"
INJECTED_KINDS = ("device-error", "hang")
# What drivers and libraries say when the device, not the input, failed.
DEVICE_FAULT_MARKS = (
    "CUDA error",
    "CUDA driver error",
    "CUBLAS_STATUS_",
    "CUDNN_STATUS_",
    "cuDNN error",
    "HIP error",
)
INJECTED_MESSAGE = "CUDA error: an illegal memory access was encountered"


def is_device_fault(exc: BaseException) -> bool:
    """``exc`` says the device failed (sticky until the process ends), not a record."""
    if is_oom(exc):
        return False
    if isinstance(exc, torch.AcceleratorError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in DEVICE_FAULT_MARKS)


@dataclasses.dataclass(frozen=True)
class InjectedFault:
    """A fault this worker's forwards simulate (``VIRNUC_DASK_INJECT_FAULT``)."""

    kind: str
    after: int

    @classmethod
    def parse(cls, text: str) -> InjectedFault:
        kind, _, after = text.partition(":")
        if kind not in INJECTED_KINDS or not after.isdigit():
            raise ConfigError(
                f"{INJECT_VARIABLE}={text!r}: expected KIND:N with KIND one of "
                f"{', '.join(INJECTED_KINDS)} and N the forwards that run first"
            )
        return cls(kind, int(after))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> InjectedFault | None:
        text = environ.get(INJECT_VARIABLE, "").strip()
        return cls.parse(text) if text else None

    def install(self, models: Mapping[str, torch.nn.Module]) -> None:
        """Make the forwards of ``models`` fail as :attr:`kind` after :attr:`after`."""
        lock = threading.Lock()
        count = [0]
        never = threading.Event()

        def hook(module: torch.nn.Module, args: Any) -> None:
            with lock:
                count[0] += 1
                n = count[0]
            if n <= self.after:
                return
            if n == self.after + 1:
                logger.warning("%s: forward %d fails as injected (%s)", INJECT_VARIABLE, n, self)
            if self.kind == "hang":
                never.wait()
            raise torch.AcceleratorError(INJECTED_MESSAGE)

        for model in models.values():
            model.register_forward_pre_hook(hook)
