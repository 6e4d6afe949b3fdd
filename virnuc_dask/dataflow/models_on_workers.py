"""The models on the workers, from the client: the run's precision resolved once from
every worker, the plugin registered, each worker's status, the bounded wait for every
worker to load (or fail to), the workers whose load failed, and what the loaded models
are (widths, precision, device)."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from typing import Any

from distributed import Client

from virnuc_dask.cluster.workers import torch_threads_by_host
from virnuc_dask.config import Settings
from virnuc_dask.dataflow.dashboard import ThroughputMetrics
from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.registry import EMBEDDING_MODELS
from virnuc_dask.worker import precision as precisions
from virnuc_dask.worker.plugin import (
    EVENT_TOPIC,
    MODEL_LOAD_TIMEOUT,
    PLUGIN_NAME,
    ModelPlugin,
    ModelSpec,
)

logger = logging.getLogger(__name__)


def load_models(settings: Settings, client: Client) -> dict[str, Any]:
    """Register the models of ``settings`` on every worker and wait for them.

    Returns the facts of :func:`model_facts`, ``registered`` (the time of
    registration) and ``run`` (the registration's token: the failures reported under
    it belong to this run). Raises
    :class:`~virnuc_dask.errors.ModelLoadError` when no worker could load them or the
    classifier does not take the two models' widths.
    """
    return ModelLoading(settings, client).facts()


class ModelLoading:
    """The models registered on every worker, loading while the caller goes on (a
    sequencing run reads its first samples meanwhile).

    Constructing it resolves the run's precision and registers the plugin (quick);
    :meth:`facts` waits (bounded) for the workers, once: every later call, from any
    thread, returns the same facts or raises the same error.
    """

    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings, self.client = settings, client
        self.run = uuid.uuid4().hex
        resolved = run_precision(client, settings)
        spec = ModelSpec.from_settings(
            settings,
            threads_by_host=tuple(torch_threads_by_host(client).items()),
            run=self.run,
            precision=resolved,
        )
        self.registered = time.time()
        self.started = time.perf_counter()
        #: Seconds from registration to the models being ready (None until then).
        self.seconds: float | None = None
        log_workers_leaving(client)
        client.register_plugin(ModelPlugin(spec))
        client.register_plugin(ThroughputMetrics())
        self._lock = threading.Lock()
        self._facts: dict[str, Any] | None = None
        self._error: BaseException | None = None

    def facts(self) -> dict[str, Any]:
        """Wait until a worker's models are ready; what they are (see :func:`load_models`)."""
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._facts is None:
                try:
                    self._facts = self._wait()
                except BaseException as exc:
                    self._error = exc
                    raise
                self.seconds = time.perf_counter() - self.started
            return self._facts

    def _wait(self) -> dict[str, Any]:
        # Bounded: stops when every worker failed to load (naming each) or after a timeout.
        statuses = wait_for_models(self.client, run=self.run)
        facts = {**model_facts(statuses), "registered": self.registered, "run": self.run}
        width = sum(facts[m.key] for m in EMBEDDING_MODELS)
        classifier = self.settings.classifier
        if classifier is not None and facts["classifier_input"] != width:
            given = " + ".join(f"{m.name} ({facts[m.key]})" for m in EMBEDDING_MODELS)
            raise ModelLoadError(
                f"{classifier}: classifier expects {facts['classifier_input']} features, "
                f"but {given} give {width}"
            )
        return facts


async def _auto_precision(device: str, dask_worker: Any) -> str | None:
    import asyncio

    # Off the event loop: the first CUDA call of a process takes seconds.
    name = str(dask_worker.name)
    return await asyncio.to_thread(precisions.worker_auto_precision, device, worker=name)


def run_precision(client: Client, settings: Settings) -> str | None:
    """The precision of the whole run when ``settings.precision`` is ``auto``: the least
    capable of the connected workers' devices decides
    (:func:`~virnuc_dask.worker.precision.lowest`), so that one node with two GPU
    generations embeds every row in one precision. ``None`` for an explicit precision,
    and when no worker can tell (each then fails to load and says why)."""
    if settings.precision != "auto":
        return None
    found = {
        address: p
        for address, p in client.run(_auto_precision, settings.device, on_error="ignore").items()
        if isinstance(p, str)
    }
    if not found:
        return None
    chosen = precisions.lowest(list(found.values()))
    lower = sorted(a for a, p in found.items() if p == chosen)
    if len(set(found.values())) > 1:
        logger.warning(
            "precision auto: %s for every worker, the most %s can compute (the others "
            "could compute %s); rows of one run share one precision",
            chosen,
            ", ".join(lower),
            ", ".join(sorted(set(found.values()) - {chosen})),
        )
    else:
        logger.info("precision auto: %s on all %d worker(s)", chosen, len(found))
    return chosen


def log_workers_leaving(client: Client) -> None:
    """Log, as the scheduler hears of it, each worker that leaves the run: its models
    could not be loaded, its device failed or got stuck (the error names worker, host
    and device)."""

    def on_event(event: tuple[float, Any]) -> None:
        msg = event[1]
        if isinstance(msg, dict) and msg.get("state") == "failed":
            logger.warning("%s", msg.get("error"))

    client.subscribe_topic(EVENT_TOPIC, on_event)


def model_facts(statuses: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Widths, precision and device of the first worker whose models are ready."""
    ready = [s for _, s in sorted(statuses.items()) if s["state"] == "ready"]
    first = ready[0]
    precisions = sorted({s["precision"] for s in ready})
    if len(precisions) > 1:
        logger.warning(
            "workers embed in different precisions (%s); each is listed in the run summary",
            ", ".join(precisions),
        )
    return {**first["dims"], "precision": first["precision"], "device": first["device"]}


def _status(dask_worker: Any) -> dict[str, Any]:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is None:
        return {"worker": dask_worker.address, "state": "new"}
    return plugin.status()


def model_status(client: Client) -> dict[str, dict[str, Any]]:
    """Every connected worker's :meth:`ModelPlugin.status`."""
    return client.run(_status, on_error="ignore")


# How long the client lets failed workers finish leaving before it reports them.
LEAVE_WAIT_S = 15.0


def load_failures(client: Client, *, run: str | None = None) -> list[dict[str, Any]]:
    """Workers that failed (from scheduler events): their models could not be loaded or
    their device failed. With ``run`` (the token of :class:`ModelSpec`), only those
    reported under that registration; an earlier run's failures on the same cluster
    are not this run's, however close in time."""
    failed = {}
    for _, msg in client.get_events(EVENT_TOPIC):
        if (
            isinstance(msg, dict)
            and msg.get("state") == "failed"
            and (run is None or msg.get("run") == run)
        ):
            failed[msg["worker"]] = msg
    return list(failed.values())


def wait_for_models(
    client: Client,
    *,
    timeout: float = MODEL_LOAD_TIMEOUT,
    poll: float = 0.25,
    run: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Wait until a worker has its models ready; every worker's status.

    Raises :class:`ModelLoadError` when every worker failed (each named with its
    error), when no worker is left, or after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    deadline_leave = math.inf
    while True:
        statuses = model_status(client)
        if any(s["state"] == "ready" for s in statuses.values()):
            return statuses
        if not any(s["state"] in ("new", "loading") for s in statuses.values()):
            deadline_leave = min(deadline_leave, time.monotonic() + LEAVE_WAIT_S)
        leaving = [a for a, s in statuses.items() if s["state"] == "failed"]
        if leaving and time.monotonic() < min(deadline_leave, deadline):
            # Failed workers close themselves; let them finish before the caller, about
            # to stop, closes the cluster under them.
            time.sleep(poll)
            continue
        if not any(s["state"] in ("new", "loading") for s in statuses.values()):
            failures = load_failures(client, run=run)
            reasons = (
                "; ".join(f["error"] for f in failures) or "no worker is connected to the scheduler"
            )
            raise ModelLoadError(f"no worker could load the models: {reasons}")
        if time.monotonic() > deadline:
            loading = sorted(a for a, s in statuses.items() if s["state"] != "failed")
            raise ModelLoadError(
                f"no worker finished loading the models within {timeout:.0f} s (still "
                f"loading: {', '.join(loading)}); check the model files and the workers' "
                "logs"
            )
        time.sleep(poll)
