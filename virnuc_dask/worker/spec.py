"""What a worker's models are and how to run them: :class:`ModelSpec`, built once on
the client (from the run's settings and the precision resolved from its workers) and
sent with the model plugin to every worker.

>>> ModelSpec.from_settings(Settings(), precision="fp32").precision
'fp32'
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from virnuc_dask.config import Settings
from virnuc_dask.models.registry import EMBEDDING_MODELS


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where the models come from (``sources``: each embedding model's key and source)
    and how to run them.

    ``precision`` is the run's: the client resolves ``auto`` once from every worker
    present (:func:`~virnuc_dask.worker.precision.lowest`) and sets ``auto_resolved``;
    a worker whose device cannot compute that precision then refuses to load, rather
    than write rows of another precision under the run's label. ``auto`` left in the
    spec (a plugin registered by hand) lets each worker pick for its own device.
    """

    sources: tuple[tuple[str, str], ...]
    classifier: str | None = None  # None: the embedding models only (training)
    precision: str = "auto"
    compile: str = "auto"
    device: str = "auto"
    model_cache: str | None = None
    offline: bool = False
    threads: int | None = None
    threads_by_host: tuple[tuple[str, int], ...] = ()
    stuck_after: float = 300.0
    run: str = ""  # this registration's token, in every event: a run's own failures
    auto_resolved: bool = False  # precision resolved from auto by the client

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        threads_by_host: tuple[tuple[str, int], ...] = (),
        run: str = "",
        precision: str | None = None,
    ) -> ModelSpec:
        """The run's models; without a classifier in ``settings``, the embedding models.
        ``precision``: the one the client resolved from ``settings.precision == "auto"``."""
        classifier = settings.classifier
        return cls(
            sources=tuple((m.key, m.source(settings)) for m in EMBEDDING_MODELS),
            classifier=None if classifier is None else str(Path(classifier).resolve()),
            precision=precision or settings.precision,
            auto_resolved=precision is not None and settings.precision == "auto",
            compile=settings.compile,
            device=settings.device,
            model_cache=settings.model_cache,
            offline=settings.offline,
            threads=settings.threads,
            threads_by_host=threads_by_host,
            stuck_after=settings.stuck_after,
            run=run,
        )
