"""One run of the prediction, from ``Settings`` to result files: the orchestration that
``virnuc-dask predict``, ``virnuc-dask demo`` and :func:`virnuc_dask.predict` share.

It checks the inputs before any cluster starts, starts the cluster the settings name
(unless a client is given), logs the dashboard link, keeps Dask's performance report
when asked, and runs :func:`virnuc_dask.dataflow.pipeline.predict`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from distributed import Client

from virnuc_dask.config import Settings

if TYPE_CHECKING:
    from virnuc_dask.cluster.start import RunCluster
from virnuc_dask.events import Progress

logger = logging.getLogger(__name__)

# Given the run's cluster (its client, and the status of its batch jobs), a context
# manager that yields the progress sink for the run (the CLI's live display, which shows
# the workers and the jobs that have none yet).
ProgressFactory = Callable[["RunCluster"], AbstractContextManager[Progress | None]]


def run_prediction(
    settings: Settings,
    *,
    client: Client | None = None,
    progress: ProgressFactory | None = None,
    work: Callable[..., Any] | None = None,
) -> tuple[Any, str | None]:
    """Run ``settings``' prediction; return the result and the dashboard link (if any).

    ``work(settings, client, progress=...)``: what runs on the cluster instead of
    :func:`~virnuc_dask.dataflow.pipeline.predict` (a sequencing run's samples)."""
    from virnuc_dask.cluster.start import RunCluster, open_cluster
    from virnuc_dask.dataflow.dashboard import dashboard_link, performance_report
    from virnuc_dask.dataflow.pipeline import predict, preflight

    preflight(settings)  # bad inputs fail here, before any cluster starts
    with contextlib.ExitStack() as stack:
        if client is None:
            cluster = stack.enter_context(open_cluster(settings))
            client = cluster.client
        else:
            cluster = RunCluster(client)
        link = dashboard_link(client)
        logger.info(
            "dashboard: %s", link or "none (the scheduler runs without one; it needs bokeh)"
        )
        stack.enter_context(client.as_current())
        stack.enter_context(performance_report(settings.performance_report))
        sink = stack.enter_context(progress(cluster)) if progress is not None else None
        result = (work or predict)(settings, client, progress=sink)
    return result, link
