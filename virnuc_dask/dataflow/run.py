"""One run of the prediction, from ``Settings`` to result files: the orchestration that
``virnuc-dask predict``, ``virnuc-dask demo`` and :func:`virnuc_dask.predict` share.

It checks the inputs before any cluster starts and runs
:func:`virnuc_dask.dataflow.pipeline.predict` in the run's session
(:mod:`virnuc_dask.dataflow.session`: the cluster, the dashboard link, Dask's
performance report, the progress display).
"""

from __future__ import annotations

from distributed import Client

from virnuc_dask.config import Settings
from virnuc_dask.dataflow.pipeline import RunResult
from virnuc_dask.dataflow.session import ProgressFactory, run_session


def run_prediction(
    settings: Settings, *, client: Client | None = None, progress: ProgressFactory | None = None
) -> tuple[RunResult, str | None]:
    """Run ``settings``' prediction; return the result and the dashboard link (if any)."""
    from virnuc_dask.dataflow.pipeline import predict, preflight

    preflight(settings)  # bad inputs fail here, before any cluster starts
    with run_session(settings, client=client, progress=progress) as session:
        result = predict(settings, session.client, progress=session.progress)
    return result, session.dashboard_link
