"""virnuc-dask: VirNucPro viral read identification as a Dask dataflow.

From Python (a notebook, a script), the same pipeline as ``virnuc-dask predict``::

    from virnuc_dask import predict
    result = predict("reads.fa", out="results", classifier="500_model.pth", client=client)
    result.scores            # lazy dask array [ORFs, 2] over results/embeddings.zarr

The names below are imported on first use, so ``import virnuc_dask`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "predict": "api",
    "Prediction": "api",
    "SequencingRun": "api",
    "Settings": "config",
    "load_settings": "config",
    "open_client": "cluster.start",
    "jobqueue_cluster": "cluster.jobqueue",
    "job_script": "cluster.jobqueue",
    "WORKER_ENV": "cluster.workers",
    "ThroughputMetrics": "dataflow.dashboard",
    "performance_report": "dataflow.dashboard",
    "StagedModels": "models.staging",
    "fetch_models": "models.staging",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
