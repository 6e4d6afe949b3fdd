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
                       :class:`~virnuc_dask.manifest.PartitionResult` (per model
                       tokens and seconds, measured on the worker)
classify   1           ``orfs``
write      FASTA block ``reads``
=========  ==========  ===========================================================

Both models run inside one embedding task, so their rows advance together, one
partition at a time; each shows its own measured tokens/s and share of the
embedding time. Reading and translation are one task per block and share a row.

>>> with TerminalProgress(enabled=False, interval=3600) as progress:
...     progress(ProgressEvent("read", 0, 1))
...     progress(ProgressEvent("read", 1, 1, reads=10, orfs=12))
>>> progress.state.stage("read").counts
{'reads': 10, 'orfs': 12}
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from virnuc_dask.cli.run_state import MODELS, STAGES, RunProgress, StageState, WorkerState
from virnuc_dask.events import ProgressEvent
from virnuc_dask.formatting import clock, compact

logger = logging.getLogger(__name__)

WORKER_POLL_S = 2.0


# -- rendering ------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else clock(seconds)


_count = compact


def _stage_text(state: StageState, progress: RunProgress) -> tuple[str, str]:
    """(what is done, rate) of one stage, in words."""
    key, c = state.key, state.counts
    if state.started is None:
        return "waiting", ""
    if key == "models":
        if state.finished is None:
            return "loading on the workers", ""
        return f"{c.get('precision', '?')} on {c.get('device', '?')}", ""
    if key == "read":
        text = f"{state.done}/{state.total} blocks"
        if "reads" in c:
            text += f" · {c['reads']:,} reads · {c.get('orfs', 0):,} ORFs"
        return text, ""
    if key in MODELS:
        text = f"{state.done:,}/{state.total or 0:,} ORFs"
        text += f" · {c.get('partitions', 0)}/{c.get('partitions_total', 0)} partitions"
        if progress.orfs_reused:
            text += f" ({progress.orfs_reused:,} reused)"
        if progress.orfs_failed:
            text += f" · {progress.orfs_failed:,} failed"
        rate = []
        tps = progress.tokens_per_s(key)
        if tps:
            rate.append(f"{_count(tps)} tok/s")
        share = progress.model_share(key)
        if share is not None:
            rate.append(f"{share:.0%} of model time")
        return text, " · ".join(rate)
    if key == "classify":
        if state.finished is None:
            return "running", ""
        return f"{c.get('orfs', 0):,} ORFs scored", ""
    if key == "write":
        text = f"{state.done}/{state.total} blocks"
        if "reads" in c:
            text += f" · {c['reads']:,} reads"
        return text, ""
    return f"{state.done}/{state.total}", ""


def _fraction(state: StageState) -> float | None:
    if state.started is None:
        return 0.0
    if state.finished is not None:
        return 1.0
    if not state.total:
        return None
    return min(1.0, state.done / state.total)


def stage_table(progress: RunProgress, now: float | None = None, *, eta: bool = True) -> Table:
    """One row per stage: bar, units done, rate, elapsed, time left (unless not ``eta``)."""
    now = progress.clock() if now is None else now
    table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
    for name, kw in (
        ("stage", {}),
        ("", {"width": 24}),
        ("done", {}),
        ("rate", {}),
        ("elapsed", {"justify": "right"}),
        ("left", {"justify": "right"}),
    ):
        table.add_column(name, style="bold" if name == "stage" else None, no_wrap=True, **kw)
    for key, state in progress.stages.items():
        done, rate = _stage_text(state, progress)
        fraction = _fraction(state)
        bar = ProgressBar(total=1.0, completed=fraction or 0.0, width=24, pulse=fraction is None)
        mark = "✓ " if state.finished is not None else "  "
        table.add_row(
            mark + state.label,
            bar,
            done,
            rate,
            _duration(state.elapsed(now)),
            _duration(progress.eta(key, now)) if eta else "",
        )
    return table


def gpu_text(figures: Mapping[str, Any] | str | None, peak: float | None = None) -> str:
    """``87% · 12.1/80 GB (peak 14.0)`` from :func:`.dashboard.gpu_metrics`, or ``no GPU``."""
    if figures is None:
        return ""
    if isinstance(figures, str):
        return figures
    parts = []
    if figures.get("utilization") is not None:
        parts.append(f"{figures['utilization']:.0f}%")
    used = figures.get("memory_used")
    if used is None:
        used = figures.get("process_memory")
    if used is not None:
        total = figures.get("memory_total")
        text = f"{used / 1e9:.1f}" + (f"/{total / 1e9:.0f}" if total else "") + " GB"
        if peak:
            text += f" (peak {peak / 1e9:.1f})"
        parts.append(text)
    return " · ".join(parts) or "GPU"


def worker_table(
    progress: RunProgress, activity: Mapping[str, str], gpus: Mapping[str, Any] | None = None
) -> Table:
    """One row per worker: what it runs now, partitions, ORFs and tokens per second, and
    its GPU's utilisation and memory (``no GPU`` on a CPU worker)."""
    gpus = gpus or {}
    table = Table(box=None, pad_edge=False, show_edge=False)
    for name in (
        "worker",
        "tasks",
        "partitions",
        "ORFs",
        "ORF/s",
        *(f"{m} tok/s" for m in MODELS.values()),
        "GPU",
    ):
        table.add_column(
            name,
            no_wrap=True,
            style="bold" if name == "worker" else None,
            justify="left" if name in ("worker", "tasks", "GPU") else "right",
        )
    for address in sorted(set(activity) | set(progress.workers)):
        w = progress.workers.get(address, WorkerState(address))
        rates = [
            _count(w.tokens[m] / w.model_seconds[m]) if w.model_seconds[m] else "" for m in MODELS
        ]
        table.add_row(
            address,
            activity.get(address, "gone"),
            str(w.partitions),
            f"{w.orfs:,}",
            f"{w.orfs_per_s:.1f}" if w.orfs_per_s else "",
            *rates,
            gpu_text(gpus.get(address), progress.gpu_peak.get(address)),
        )
    return table


def _embed_words(progress: RunProgress, now: float, *, eta: bool = True) -> str:
    esm = progress.stage("esm")
    c = esm.counts
    text = f"embedding: {esm.done:,}/{esm.total or 0:,} ORFs"
    text += f" · {c.get('partitions', 0)}/{c.get('partitions_total', 0)} partitions"
    if progress.orfs_reused:
        text += f" ({progress.orfs_reused:,} ORFs reused)"
    if progress.orfs_failed:
        text += f" · {progress.orfs_failed:,} failed"
    rate = progress.embed_rate(now)
    if rate:
        text += f" · {rate:,.1f} ORF/s"
    left = progress.eta("esm", now) if eta else None
    if left is not None:
        text += f" · ETA {_duration(left)}"
    for key, name in MODELS.items():
        tps, share = progress.tokens_per_s(key), progress.model_share(key)
        if tps and share is not None:
            text += f" · {name} {_count(tps)} tok/s ({share:.0%})"
    return text


def status_line(
    progress: RunProgress,
    activity: Mapping[str, str] | None = None,
    gpus: Mapping[str, Any] | None = None,
    cluster: list[str] | None = None,
) -> str:
    """The whole state in one log line; ``cluster``: jobs without workers (no ETA then)."""
    now = progress.clock()
    parts = [f"progress {_duration(now - progress.started)}"]
    for key, state in progress.stages.items():
        if state.started is None or key == "dnabert":
            continue
        text = (
            _embed_words(progress, now, eta=not cluster)
            if key == "esm"
            else f"{state.label}: {_stage_text(state, progress)[0]}"
        )
        parts.append(text + (" ✓" if state.finished is not None else ""))
    workers = []
    for address in sorted(set(activity or {}) | set(progress.workers)):
        w = progress.workers.get(address, WorkerState(address))
        text = f"{address} {w.partitions} partitions {w.orfs:,} ORFs"
        if w.orfs_per_s:
            text += f" {w.orfs_per_s:.1f} ORF/s"
        if activity is not None:
            text += f" ({activity.get(address, 'gone')})"
        if gpus and address in gpus:
            text += f" [{gpu_text(gpus[address], progress.gpu_peak.get(address))}]"
        workers.append(text)
    if workers:
        parts.append("workers: " + "; ".join(workers))
    if cluster:
        parts.append("cluster: " + "; ".join(cluster))
    return " | ".join(parts)


# -- the terminal object --------------------------------------------------------------------


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


class TerminalProgress:
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
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal if enabled is None else enabled
        if interval <= 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval}")
        self.interval = interval
        self.client = client
        self.cluster_status = cluster_status
        self.state = RunProgress()
        self._activity: dict[str, str] = {}
        self._gpus: dict[str, Any] = {}
        self._polled = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None

    # the callback
    def __call__(self, event: ProgressEvent) -> None:
        self.state.record(event)
        stage, done, total = event.stage, event.done, event.total
        if not self.live and stage in (*STAGES, "embed") and total and done >= total:
            state = self.state.stage("esm" if stage == "embed" else stage)
            logger.info(
                "%s done in %s",
                "embedding" if stage == "embed" else state.label,
                _duration(state.elapsed(self.state.clock())),
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

    def __enter__(self) -> TerminalProgress:
        if self.live:
            self._live = Live(
                self,
                console=self.console,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=True,
            )
            self._live.start()
        else:
            self._thread = threading.Thread(
                target=self._log_every_interval, name="virnuc-progress", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._polled = 0.0  # the last view shows the workers as they are now
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
        if self._thread is not None:
            self._thread.join()
            logger.info("%s", self.line())

    def _log_every_interval(self) -> None:
        while not self._stop.wait(self.interval):
            logger.info("%s", self.line())
