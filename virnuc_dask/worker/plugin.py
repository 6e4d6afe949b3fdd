"""The models on a worker: loaded once per worker process by a named ``WorkerPlugin``.

Register it with ``client.register_plugin(ModelPlugin(spec))``; every current and future
worker (a restarted one included) sets it up, and tasks reach it through
:func:`worker_models`. This is the only place a model is loaded on a worker.

- **Off the event loop.** ``setup`` starts the load in a thread and returns: the
  worker keeps answering heartbeats during the minutes ESM-2 3B takes.
- **Ready or gone.** A worker whose load succeeded offers the resource ``GPU=1``
  (embedding and classifying tasks ask for it; workers started by this package offer
  it from the start, a worker started by hand gets it now). A worker whose load failed
  (a missing file, a busy or broken GPU, a device it was started for and cannot use)
  reports the error, naming worker, host and device, as an event of topic
  ``virnuc-dask-models`` on the scheduler, gives the resource up and closes with its
  nanny, so that its tasks go to the healthy workers and it is not restarted into the
  same failure. :mod:`virnuc_dask.dataflow.models_on_workers` has the client's side: the
  bounded wait for the first ready worker and the list of this run's failed ones.
- **One task per device.** The ``GPU`` resource lets the scheduler send one
  embedding task at a time; the plugin's device lock makes sure of it inside
  the worker, whatever resources the worker was started with.
- **A failing device costs the worker, not the run.** A device fault in a task that
  holds the device (:mod:`.faults`: a sticky CUDA error, not an OOM), or a task that
  makes no progress for far longer than this worker's own rate predicts
  (:mod:`.stall`), takes the worker out the same way as a failed load: an event
  naming worker, host and device, the resource given up, the worker closed (a
  stuck one by its nanny, which kills the process). The task goes to another
  worker; partitions this worker finished are kept.

>>> from virnuc_dask.config import Settings
>>> plugin = ModelPlugin(ModelSpec.from_settings(Settings()))
>>> plugin.name
'virnuc-dask-models'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import torch
from distributed import Reschedule, WorkerPlugin, get_worker
from distributed.utils import sync

from virnuc_dask.core.batching import TokenBudget
from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.adapter import ModelAdapter
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS
from virnuc_dask.worker import device as devices
from virnuc_dask.worker.faults import InjectedFault, is_device_fault
from virnuc_dask.worker.gpu_figures import GpuSampler
from virnuc_dask.worker.leaving import leave, report
from virnuc_dask.worker.precision import (
    DTYPES,
    apply_precision,
    load_dtype,
    matmul_state,
    pin_fp32,
    precision_for_worker,
    resolve_precision,
)
from virnuc_dask.worker.spec import ModelSpec
from virnuc_dask.worker.stall import POLL_S, StallWatch, watch_forwards

logger = logging.getLogger(__name__)

PLUGIN_NAME = "virnuc-dask-models"
EVENT_TOPIC = "virnuc-dask-models"
EMBED_RESOURCE = "GPU"
# ESM-2 3B from a slow shared file system takes minutes; past this the run stops.
MODEL_LOAD_TIMEOUT = 1800.0
# A task waiting for the device behind another embedding task on the same worker.
DEVICE_WAIT_TIMEOUT = 3600.0
# A worker leaving because of its device tells the scheduler first, within this bound.
LEAVE_TIMEOUT_S = 30.0

__all__ = [
    "DTYPES",
    "EMBED_RESOURCE",
    "ModelPlugin",
    "ModelSpec",
    "resolve_precision",
    "worker_models",
]


class ModelPlugin(WorkerPlugin):
    """Loads the embedding models and the classifier once per worker, off its event loop.

    ``adapters``: each embedding model's adapter for the batch runner, by key."""

    name = PLUGIN_NAME

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._clear()

    def _clear(self) -> None:
        self.state = "new"  # new -> loading -> ready | failed
        self.error: str | None = None
        self.ready_at: float | None = None  # time.time() when the models were ready
        self.address = self.host = self.worker_name = ""
        self.device: torch.device | None = None
        self.device_info: dict[str, Any] = {}
        self.threads: int | None = None
        self.precision: str | None = None
        self.matmul: dict[str, Any] = {}
        self.adapters: dict[str, ModelAdapter] = {}
        self.classifier = None
        self.ready = threading.Event()
        self.device_lock = threading.Lock()
        self.budgets = {key: TokenBudget() for key in MODEL_KEYS}
        self._claim: devices.DeviceClaim | None = None
        self.gpu: GpuSampler | None = None  # NVML figures of the claimed GPU
        self.watch = StallWatch(floor=self.spec.stuck_after)
        self._task: asyncio.Future | None = None
        self._watchdog: asyncio.Future | None = None

    # -- lifecycle (on the worker) -------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec = state["spec"]
        self._clear()

    async def setup(self, worker: Any) -> None:
        self.address = getattr(worker, "address", "")
        self.host = urlsplit(self.address).hostname or socket.gethostname()
        name = getattr(worker, "name", None)
        self.worker_name = "" if name is None else str(name)  # 0 is a name
        self.state = "loading"
        self._task = asyncio.ensure_future(self._load_then_announce(worker))
        self._watchdog = asyncio.ensure_future(self._watch_progress(worker))

    async def _load_then_announce(self, worker: Any) -> None:
        try:
            await asyncio.to_thread(self.load)
        except Exception as exc:  # noqa: BLE001 - any load failure costs this worker only
            self._fail(exc)
        finally:
            self.ready.set()
        await report(worker, EVENT_TOPIC, self.status())
        if self.state == "ready":
            if worker.state.total_resources.get(EMBED_RESOURCE, 0) < 1:
                await worker.set_resources(**{EMBED_RESOURCE: 1})
            return
        # A warning: the run goes on with the others (the client reports it when none is left).
        logger.warning("%s; this worker leaves the cluster", self.error)
        await leave(worker, EMBED_RESOURCE, reason="models could not be loaded")

    def load(self) -> None:
        """Pick and claim the device, then load the models (blocking)."""
        from virnuc_dask.models.classifier import load_classifier
        from virnuc_dask.models.compiled import compile_models

        spec = self.spec
        device = devices.decide(spec.device, devices.probe())
        if device.type == "cuda":
            self._claim = devices.claim_device(
                devices.device_names(torch.cuda.device_count()), host=self.host
            )
            device = torch.device("cuda", self._claim.index)
            torch.cuda.set_device(device)
        self.device = device
        self.device_info = devices.describe_device(device)
        if self._claim is not None:
            self.device_info["uuid"] = self._claim.name
            self.gpu = GpuSampler.open(self._claim.name)
        if device.type == "cpu":
            self.threads = spec.threads or dict(spec.threads_by_host).get(self.host)
            self.activate()
        self.precision = precision_for_worker(
            spec.precision, device, resolved=spec.auto_resolved, worker=self.worker_name
        )
        if self.precision == "fp32":
            pin_fp32()
        self.matmul = matmul_state()
        dtype = load_dtype(self.precision)
        cache, sources = spec.model_cache, dict(spec.sources)
        self.adapters = {
            m.key: m.load_adapter(
                sources[m.key],
                device=device,
                dtype=dtype,
                cache_dir=None if cache is None else str(m.cache_dir(cache)),
                offline=spec.offline,
            )
            for m in EMBEDDING_MODELS
        }
        for adapter in self.adapters.values():
            apply_precision(adapter.model, self.precision)
        self.compiled = compile_models([a.model for a in self.adapters.values()], spec, device)
        self.classifier = None if spec.classifier is None else load_classifier(spec.classifier)
        embedding = {key: adapter.model for key, adapter in self.adapters.items()}
        watch_forwards(self.watch, embedding)
        injected = InjectedFault.from_environment()
        if injected is not None:
            injected.install(embedding)
        self.ready_at = time.time()
        self.state = "ready"
        logger.info(
            "models ready on %s (%s, compiled %s, %d torch threads)",
            device,
            self.precision,
            self.compiled,
            torch.get_num_threads(),
        )

    def _fail(self, exc: BaseException) -> None:
        self.adapters, self.classifier = {}, None
        if self._claim is not None:
            self._claim.release()
            self._claim = None
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        self.error = f"{self.where()} could not load the models: {type(exc).__name__}: {detail}"
        self.state = "failed"

    def where(self) -> str:
        """``worker ADDRESS (NAME) on HOST (DEVICE, CUDA_VISIBLE_DEVICES=...)``."""
        named = self.worker_name and self.worker_name != self.address
        name = f" ({self.worker_name})" if named else ""
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
        device = [str(self.device)] if self.device is not None else []
        if self.device_info.get("uuid"):
            device.append(str(self.device_info["uuid"]))
        if gpu:
            device.append(f"CUDA_VISIBLE_DEVICES={gpu}")
        return f"worker {self.address}{name} on {self.host}" + (
            f" ({', '.join(device)})" if device else ""
        )

    def device_failed(self, exc: BaseException) -> None:
        """In the task that saw ``exc`` (a device fault): take this worker out of the run
        and hand the task back to the scheduler for another worker."""
        detail = (str(exc).strip().splitlines() or [""])[0]
        self.error = (
            f"{self.where()} stopped: its device failed ({type(exc).__name__}: {detail}); "
            "the worker left the run, its partitions went to the other workers"
        )
        self.state = "failed"
        logger.error("%s", self.error)
        worker = get_worker()
        # Before the task is handed back: the scheduler must not give it to this worker.
        sync(worker.loop, self._announce_and_leave, worker, callback_timeout=LEAVE_TIMEOUT_S)
        raise Reschedule()

    async def _announce_and_leave(self, worker: Any, *, stuck: bool = False) -> None:
        await report(worker, EVENT_TOPIC, self.status())
        reason = "stuck device" if stuck else "device failed"
        await leave(worker, EMBED_RESOURCE, reason=reason, stuck=stuck)

    async def _watch_progress(self, worker: Any) -> None:
        """Take the worker out when the task holding its device makes no progress."""
        while self.state in ("loading", "ready"):
            await asyncio.sleep(POLL_S)
            if self.gpu is not None:  # the mean utilisation is over the embedding only
                self.gpu.sample(embedding=self.watch.holding)
            why = self.watch.overdue()
            if why is None or self.state != "ready":
                continue
            self.state = "failed"
            self.error = (
                f"{self.where()} is stuck: {why}; the worker was closed, its partitions "
                "went to the other workers"
            )
            logger.error("%s", self.error)
            await self._announce_and_leave(worker, stuck=True)
            return

    def teardown(self, worker: Any) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.adapters, self.classifier = {}, None
        if self._claim is not None:
            self._claim.release()
            self._claim = None
        if self.gpu is not None:
            self.gpu.close()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- use (in tasks) ------------------------------------------------------------------

    def activate(self) -> ModelPlugin:
        """Call at the start of a task: torch's CPU thread count is per calling thread."""
        if self.threads:
            torch.set_num_threads(self.threads)
        return self

    @contextlib.contextmanager
    def holding_device(
        self, what: str = "a task", *, timeout: float = DEVICE_WAIT_TIMEOUT
    ) -> Iterator[None]:
        """Run the block as the only user of this worker's device, watched for progress
        (``what`` names it); a device fault in it takes this worker out of the run
        (:meth:`device_failed`: the task is rescheduled elsewhere)."""
        if not self.device_lock.acquire(timeout=timeout):
            raise RuntimeError(
                f"worker {self.address}: the device stayed busy with another embedding task "
                f"for {timeout:.0f} s"
            )
        self.watch.begin(what)
        try:
            yield
        except Exception as exc:
            if not is_device_fault(exc):
                raise
            self.device_failed(exc)
        finally:
            self.watch.end()
            self.device_lock.release()

    def budget(self, model: str) -> TokenBudget:
        """The token budget this worker learned for embedding model ``model`` (its key)."""
        return self.budgets[model]

    @property
    def dims(self) -> dict[str, int]:
        return {
            **{key: adapter.width for key, adapter in self.adapters.items()},
            "classifier_input": None if self.classifier is None else self.classifier.input_dim,
        }

    def status(self) -> dict[str, Any]:
        """State, device, precision and error of this worker's models (plain data)."""
        out: dict[str, Any] = {
            "worker": self.address,
            "host": self.host,
            "worker_name": self.worker_name,
            "state": self.state,
            "run": self.spec.run,
            "time": time.time(),
        }
        if self.device is not None:
            out.update(device=str(self.device), device_info=self.device_info)
        if self.state == "ready":
            out.update(
                ready_at=self.ready_at,
                precision=self.precision,
                compiled=self.compiled,
                dims=self.dims,
                matmul=self.matmul,
                threads=torch.get_num_threads() if self.device.type == "cpu" else None,
            )
        if self.gpu is not None:
            out["gpu"] = self.gpu.figures()
        if self.device is not None and self.device.type == "cuda":
            out["memory"] = {
                "reserved": torch.cuda.memory_reserved(self.device),
                "peak": torch.cuda.max_memory_reserved(self.device),
            }
        if self.error:
            out["error"] = self.error
        return out


def worker_models(*, timeout: float = MODEL_LOAD_TIMEOUT) -> ModelPlugin:
    """The model plugin of the worker running the current task, once its models loaded.

    On a worker whose load failed the task is handed back to the scheduler
    (``Reschedule``): that worker is leaving, a healthy one takes the task.
    """
    worker = get_worker()
    try:
        plugin = worker.plugins[PLUGIN_NAME]
    except KeyError:
        raise RuntimeError(
            f"worker {worker.address} has no {PLUGIN_NAME!r} plugin; register ModelPlugin first"
        ) from None
    if not plugin.ready.wait(timeout):
        raise ModelLoadError(f"worker {worker.address}: models still loading after {timeout:.0f} s")
    if plugin.state != "ready":
        raise Reschedule()
    return plugin.activate()
