"""What the progress display shows of a :class:`.run_state.RunProgress`: the stage table
(bar, units done, rate, elapsed, time left), the worker table (current tasks,
partitions, ORFs and tokens per second, GPU utilisation and memory) and the whole state
as one log line. Rendering only: the state is kept by :mod:`.run_state`, the live display
and the log lines by :mod:`.progress`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.progress_bar import ProgressBar
from rich.table import Table

from virnuc_dask.cli.run_state import (
    LAST_MODEL,
    MODELS,
    RunProgress,
    StageState,
    WorkerState,
)
from virnuc_dask.formatting import clock, compact


def elapsed_text(seconds: float | None) -> str:
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
            elapsed_text(state.elapsed(now)),
            elapsed_text(progress.eta(key, now)) if eta else "",
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
    rows = progress.stage(LAST_MODEL)
    c = rows.counts
    text = f"embedding: {rows.done:,}/{rows.total or 0:,} ORFs"
    text += f" · {c.get('partitions', 0)}/{c.get('partitions_total', 0)} partitions"
    if progress.orfs_reused:
        text += f" ({progress.orfs_reused:,} ORFs reused)"
    if progress.orfs_failed:
        text += f" · {progress.orfs_failed:,} failed"
    rate = progress.embed_rate(now)
    if rate:
        text += f" · {rate:,.1f} ORF/s"
    left = progress.eta(LAST_MODEL, now) if eta else None
    if left is not None:
        text += f" · ETA {elapsed_text(left)}"
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
    parts = [f"progress {elapsed_text(now - progress.started)}"]
    for key, state in progress.stages.items():
        if state.started is None or (key in MODELS and key != LAST_MODEL):
            continue
        text = (
            _embed_words(progress, now, eta=not cluster)
            if key == LAST_MODEL
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
