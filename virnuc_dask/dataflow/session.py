"""The session a command runs in: the output directories held (one run each), the
cluster the settings name (or a client given), the dashboard link logged, the client
made current, Dask's performance report kept when
asked, and the progress sink of the run. ``predict``, ``train`` and ``evaluate`` (and
:func:`virnuc_dask.predict`) each run inside one::

    with run_session(settings, progress=display) as session:
        result = predict(settings, session.client, progress=session.progress)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from distributed import Client

from virnuc_dask.config import Settings
from virnuc_dask.events import Progress

if TYPE_CHECKING:
    from virnuc_dask.cluster.start import RunCluster


# Given the run's cluster (its client, and the status of its batch jobs), a context
# manager that yields the progress sink for the run (the CLI's live display, which shows
# the workers and the jobs that have none yet).
ProgressFactory = Callable[["RunCluster"], AbstractContextManager[Progress | None]]


@dataclasses.dataclass(frozen=True)
class Session:
    """The client of a run, its progress sink (or None) and its dashboard link (or None)."""

    client: Client
    progress: Progress | None
    dashboard_link: str | None


@contextlib.contextmanager
def run_session(
    settings: Settings,
    *,
    client: Client | None = None,
    progress: ProgressFactory | None = None,
    hold: Sequence[str] | None = None,
) -> Iterator[Session]:
    """Hold the output directories (``hold``; default ``settings.out``: a second run into
    one stops at once), start the cluster ``settings`` name (unless ``client`` is given;
    a cluster started here stops on exit) and hold the rest of the session around the
    block."""
    from virnuc_dask.cluster.start import open_cluster
    from virnuc_dask.dataflow.dashboard import dashboard_link, performance_report

    if hold is None:
        hold = [settings.out] if settings.out else []
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(open_cluster(settings, client=client, hold=hold))
        client = cluster.client
        link = dashboard_link(client)
        stack.enter_context(client.as_current())
        stack.enter_context(performance_report(settings.performance_report))
        sink = stack.enter_context(progress(cluster)) if progress is not None else None
        yield Session(client=client, progress=sink, dashboard_link=link)
