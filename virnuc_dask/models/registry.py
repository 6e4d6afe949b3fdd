"""The embedding models, in the classifier's input order: everything else iterates over
:data:`EMBEDDING_MODELS`, so that a third model is one module plus one entry here.

An entry says what the rest of the project needs to know of a model without loading it:

- ``key``: its name in store arrays, manifest entries, summaries, progress and the
  ``stage`` of a failed record; ``name``: how messages and displays call it;
- ``embeds``: the ORF field it reads (``"nucleotide"`` slice or ``"protein"``);
- ``source_setting`` / ``ceiling_setting``: the :class:`~virnuc_dask.config.Settings`
  fields naming the model (a path or a hub name) and its token ceiling per batch;
- ``cache_folder``: its folder inside ``--model-cache`` (its library's hub layout);
- ``module``: the module that loads it: ``load_adapter(source, *, device, dtype,
  cache_dir, offline)`` returns the model's
  :class:`~virnuc_dask.models.adapter.ModelAdapter` (tokenising, padding, the forward
  to pooled rows, activation bytes per token); ``source_shape(source, model_cache)``
  its layout for the FLOP count without loading it;
- ``attention``: the published model's heads and how padding reaches its attention
  (``"key mask"`` or ``"bias"``), for the kernel checks of ``doctor``;
- ``bench_layouts``: the layouts of the randomly initialised models ``bench`` builds.

Nothing here imports torch.

>>> [m.key for m in EMBEDDING_MODELS], model("esm").embeds
(['dnabert', 'esm'], 'protein')
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any

INPUTS = ("nucleotide", "protein")


@dataclasses.dataclass(frozen=True)
class EmbeddingModel:
    """One embedding model, as the project knows it before it is loaded."""

    key: str
    name: str
    embeds: str
    source_setting: str
    ceiling_setting: str
    cache_folder: str
    module: str
    attention: tuple[int, str]
    bench_layouts: dict[str, dict[str, int]]

    def implementation(self) -> ModuleType:
        """The module that loads the model (imported now: it imports torch)."""
        return importlib.import_module(self.module)

    def source(self, settings: Any) -> str:
        """The model the settings name (a path or a hub name)."""
        return getattr(settings, self.source_setting)

    def ceiling(self, settings: Any) -> int | None:
        """The token ceiling per batch the settings give (None: from the device)."""
        return getattr(settings, self.ceiling_setting)

    def load_adapter(self, source: str, **options: Any) -> Any:
        """Load the model from ``source``; its adapter for the batch runner."""
        return self.implementation().load_adapter(source, **options)


EMBEDDING_MODELS: tuple[EmbeddingModel, ...] = (
    EmbeddingModel(
        key="dnabert",
        name="DNABERT-S",
        embeds="nucleotide",
        source_setting="dnabert_model",
        ceiling_setting="dnabert_toks_per_batch",
        cache_folder="huggingface",
        module="virnuc_dask.models.dnabert",
        attention=(12, "bias"),
        bench_layouts={
            "small": {"layers": 2, "hidden": 256, "heads": 4, "intermediate": 1024},
            "tiny": {"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128},
            # VirNucPro's model, with the 512-token BPE vocabulary the builds train (not
            # its 4096: the embedding table is a lookup and costs no FLOPs); for GPUs.
            "650m": {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072},
            "real": {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072},
        },
    ),
    EmbeddingModel(
        key="esm",
        name="ESM-2",
        embeds="protein",
        source_setting="esm_model",
        ceiling_setting="toks_per_batch",
        cache_folder="torch",
        module="virnuc_dask.models.esm2",
        attention=(40, "key mask"),
        bench_layouts={
            "small": {"layers": 6, "dim": 320, "heads": 20},
            "tiny": {"layers": 2, "dim": 64, "heads": 4},
            "650m": {"layers": 33, "dim": 1280, "heads": 20},
            "real": {"layers": 36, "dim": 2560, "heads": 40},
        },
    ),
)

MODEL_KEYS: tuple[str, ...] = tuple(m.key for m in EMBEDDING_MODELS)
MODEL_NAMES: dict[str, str] = {m.key: m.name for m in EMBEDDING_MODELS}
BENCH_SIZES: tuple[str, ...] = tuple(EMBEDDING_MODELS[0].bench_layouts)


def model(key: str) -> EmbeddingModel:
    """The entry of ``key``; a ``KeyError`` naming the keys there are."""
    for m in EMBEDDING_MODELS:
        if m.key == key:
            return m
    raise KeyError(f"no embedding model {key!r}; there are {', '.join(MODEL_KEYS)}")


def failed_before(stage: str) -> frozenset[str]:
    """The models not given a record that failed in ``stage``: that model and every one
    after it (models run in registry order; a record failed in the first one is not
    given to the others)."""
    keys = list(MODEL_KEYS)
    return frozenset(keys[keys.index(stage) :]) if stage in keys else frozenset()
