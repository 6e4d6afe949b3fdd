"""Progress of a run: a rich live display on a terminal, a log line every N seconds otherwise.

The pipeline calls ``progress(event)`` with a :class:`~virnuc_dask.events.ProgressEvent`;
``done``/``total`` count the stage's units, and its other fields what the unit produced:

=========  ==========  ===========================================================
stage      unit        detail
=========  ==========  ===========================================================
models     1           ``precision``, ``device`` once the models are loaded
read       FASTA block ``reads``, ``orfs`` (totals so far)
embed      partition   first call: ``orfs_total``, ``orfs_reused``; then per finished
                       partition ``partitions``: its
                       :class:`~virnuc_dask.partition_result.PartitionResult` (per model
                       tokens and seconds, measured on the worker)
classify   partition   ``orfs``: scored so far (in the embedding task, on the worker)
write      FASTA block ``reads``
=========  ==========  ===========================================================

Both models run inside one embedding task, so their rows advance together, one
partition at a time; each shows its own measured tokens/s and share of the
embedding time. Reading and translation are one task per block and share a row.

The state is kept by :mod:`.run_state`; the tables and the log line are drawn by
:mod:`.progress_view`.

>>> with TerminalProgress(enabled=False, interval=3600) as progress:
...     progress(ProgressEvent("read", 0, 1))
...     progress(ProgressEvent("read", 1, 1, reads=10, orfs=12))
>>> progress.state.stage("read").counts
{'reads': 10, 'orfs': 12}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.text import Text

from virnuc_dask.cli.live_display import LiveDisplay
from virnuc_dask.cli.progress_view import elapsed_text, stage_table, status_line, worker_table
from virnuc_dask.cli.run_state import LAST_MODEL, STAGES, RunProgress
from virnuc_dask.events import ProgressEvent

logger = logging.getLogger(__name__)

WORKER_POLL_S = 2.0


def _activity(client) -> tuple[dict[str, str], dict[str, Any]]:
    """Tasks the scheduler has assigned to each worker (running or queued there), e.g.
    ``{"tcp://..": "embed ×1"}``, the three most frequent kinds; and each worker's GPU
    figures (:func:`.dashboard.gpu_metrics`)."""
    from dask.utils import key_split

    from virnuc_dask.dataflow.dashboard import gpu_metrics

    processing = client.processing()
    out = {}
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpus = {address: gpu_metrics(info) for address, info in workers.items()}
    for address in workers:
        tasks: dict[str, int] = {}
        for key in processing.get(address, ()):
            name = key_split(key)
            tasks[name] = tasks.get(name, 0) + 1
        busiest = sorted(tasks.items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"{k} ×{n}" for k, n in busiest[:3])
        out[address] = (text + (", …" if len(busiest) > 3 else "")) or "idle"
    return out, gpus


class TerminalProgress(LiveDisplay):
    """The pipeline's progress callback: live display on a terminal, log lines elsewhere.

    ``enabled`` None: live when stderr is a terminal. ``interval``: seconds between
    log lines when not live. ``client``: a distributed Client to list its workers and
    what they run (optional). ``cluster_status``: returns lines about batch jobs that
    have no worker yet and lost workers (``job 123 pending (Resources) 4:10``); while
    there are any, they are shown instead of the time left.

    Usage::

        with TerminalProgress(enabled=False, interval=60) as progress:
            result = predict(settings, client, progress=progress)
    """

    def __init__(
        self,
        *,
        enabled: bool | None = None,
        interval: float = 30.0,
        client=None,
        console: Console | None = None,
        cluster_status: Callable[[], list[str]] | None = None,
    ) -> None:
        super().__init__(enabled=enabled, interval=interval, console=console)
        self.client = client
        self.cluster_status = cluster_status
        self.state = RunProgress()
        self._activity: dict[str, str] = {}
        self._gpus: dict[str, Any] = {}
        self._polled = 0.0

    # the callback
    def __call__(self, event: ProgressEvent) -> None:
        self.state.record(event)
        stage, done, total = event.stage, event.done, event.total
        if not self.live and stage in (*STAGES, "embed") and total and done >= total:
            state = self.state.stage(LAST_MODEL if stage == "embed" else stage)
            logger.info(
                "%s done in %s",
                "embedding" if stage == "embed" else state.label,
                elapsed_text(state.elapsed(self.state.clock())),
            )

    update = __call__

    def activity(self) -> dict[str, str]:
        """Workers' current tasks, polled from the scheduler at most every 2 s."""
        if self.client is None:
            return {}
        now = time.monotonic()
        if now - self._polled >= WORKER_POLL_S:
            self._polled = now
            try:
                self._activity, self._gpus = _activity(self.client)
                self.state.record_gpus(self._gpus)
            except (OSError, RuntimeError, TimeoutError) as exc:  # scheduler busy or closing
                logger.debug("could not poll worker activity: %s", exc)
        return self._activity

    def cluster(self) -> list[str]:
        return self.cluster_status() if self.cluster_status is not None else []

    def __rich__(self) -> Group:
        cluster = self.cluster()
        with self.state.lock:
            parts = [stage_table(self.state, eta=not cluster)]
            activity = self.activity()
            if activity or self.state.workers:
                parts += [Text(""), worker_table(self.state, activity, self._gpus)]
        parts += [Text(line, style="yellow") for line in cluster]
        return Group(*parts)

    def line(self) -> str:
        cluster = self.cluster()
        with self.state.lock:
            return status_line(
                self.state, self.activity() if self.client else None, self._gpus, cluster
            )

    def __exit__(self, *exc: object) -> None:
        self._polled = 0.0  # the last view shows the workers as they are now
        super().__exit__(*exc)


def display_factory(verbosity: str, interval: float) -> Callable[[Any], TerminalProgress]:
    """The display of a ``predict``, ``train`` or ``evaluate`` run: given the run's cluster,
    its workers' log records forwarded at ``verbosity`` and a :class:`TerminalProgress`
    (live unless ``quiet``) that also shows the cluster's batch jobs."""

    def display(cluster: Any) -> TerminalProgress:
        from virnuc_dask.cli.logs import forward_worker_logs

        forward_worker_logs(cluster.client, verbosity)
        return TerminalProgress(
            client=cluster.client,
            interval=interval,
            cluster_status=cluster.status_lines,
            enabled=False if verbosity == "quiet" else None,
        )

    return display
