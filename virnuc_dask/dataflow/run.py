"""One run of the prediction, from ``Settings`` to result files: the orchestration that
``virnuc-dask predict``, ``virnuc-dask demo`` and :func:`virnuc_dask.predict` share.

It checks the inputs before any cluster starts, holds the output directory, starts the
cluster the settings name (unless a client is given), keeps Dask's performance report
when asked, and runs :func:`virnuc_dask.dataflow.pipeline.predict`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from distributed import Client

from virnuc_dask.config import Settings

if TYPE_CHECKING:
    from virnuc_dask.cluster.start import RunCluster
from virnuc_dask.dataflow.pipeline import RunResult
from virnuc_dask.events import Progress

logger = logging.getLogger(__name__)

# Given the run's cluster (its client, and the status of its batch jobs), a context
# manager that yields the progress sink for the run (the CLI's live display, which shows
# the workers and the jobs that have none yet).
ProgressFactory = Callable[["RunCluster"], AbstractContextManager[Progress | None]]


def run_prediction(
    settings: Settings, *, client: Client | None = None, progress: ProgressFactory | None = None
) -> tuple[RunResult, str | None]:
    """Run ``settings``' prediction; return the result and the dashboard link (if any)."""
    from virnuc_dask.cluster.start import open_cluster
    from virnuc_dask.dataflow.dashboard import dashboard_link, performance_report
    from virnuc_dask.dataflow.pipeline import predict, preflight

    preflight(settings)  # bad inputs fail here, before any cluster starts
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(open_cluster(settings, client=client, hold=[settings.out]))
        client = cluster.client
        link = dashboard_link(client)
        stack.enter_context(client.as_current())
        stack.enter_context(performance_report(settings.performance_report))
        sink = stack.enter_context(progress(cluster)) if progress is not None else None
        result = predict(settings, client, progress=sink)
    return result, link
