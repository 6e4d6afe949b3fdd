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
  to pooled rows, activation bytes per token); ``load_module`` (same arguments) the
  published architecture alone; ``source_shape(source, model_cache)`` its layout for
  the FLOP count without loading it;
- ``attention``: the published model's heads and how padding reaches its attention
  (``"key mask"`` or ``"bias"``), for the kernel checks of ``doctor``;
- ``bench_layouts``: the layouts of the randomly initialised models ``bench`` builds
  (``builder(path, **layout)`` writes one in the real format at ``directory /
  bench_file.format(**layout)``; ``layout[width_field]`` is its embedding width).

Nothing here imports torch.

>>> [m.key for m in EMBEDDING_MODELS], embedding_model("esm").embeds
(['dnabert', 'esm'], 'protein')
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

INPUTS = ("nucleotide", "protein")


@dataclasses.dataclass(frozen=True, eq=False)
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
    builder: str
    bench_file: str
    width_field: str

    def implementation(self) -> ModuleType:
        """The module that loads the model (imported now: it imports torch)."""
        return importlib.import_module(self.module)

    def source(self, settings: Any) -> str:
        """The model the settings name (a path or a hub name)."""
        return getattr(settings, self.source_setting)

    def ceiling(self, settings: Any) -> int | None:
        """The token ceiling per batch the settings give (None: from the device)."""
        return getattr(settings, self.ceiling_setting)

    def cache_dir(self, root: str | os.PathLike[str]) -> Path:
        """Its folder in the model cache at ``root`` (``--model-cache``)."""
        return Path(root) / self.cache_folder

    def load_adapter(self, source: str, **options: Any) -> Any:
        """Load the model from ``source``; its adapter for the batch runner."""
        return self.implementation().load_adapter(source, **options)

    def build_random(self, directory: Path, size: str) -> tuple[Path, int]:
        """A randomly initialised model of bench layout ``size`` written under
        ``directory`` in the real format: its path and embedding width."""
        module, function = self.builder.split(":")
        layout = self.bench_layouts[size]
        path = directory / self.bench_file.format(**layout)
        built = getattr(importlib.import_module(module), function)(path, **layout)
        return built, layout[self.width_field]

    def load_module(self, source: str, **options: Any) -> Any:
        """Load the model from ``source`` as its published architecture (a torch module)."""
        return self.implementation().load_module(source, **options)


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
        builder="virnuc_dask.models.demo:build_dnabert",
        bench_file="dnabert_s_bench",
        width_field="hidden",
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
        builder="virnuc_dask.models.demo:build_esm",
        bench_file="esm2_t{layers}_{dim}_bench.pt",
        width_field="dim",
    ),
)

MODEL_KEYS: tuple[str, ...] = tuple(m.key for m in EMBEDDING_MODELS)
MODEL_NAMES: dict[str, str] = {m.key: m.name for m in EMBEDDING_MODELS}
BENCH_SIZES: tuple[str, ...] = tuple(EMBEDDING_MODELS[0].bench_layouts)


def embedding_model(key: str) -> EmbeddingModel:
    """The entry of ``key``; a ``KeyError`` naming the keys there are."""
    for m in EMBEDDING_MODELS:
        if m.key == key:
            return m
    raise KeyError(f"no embedding model {key!r}; there are {', '.join(MODEL_KEYS)}")


def lacking_rows(stage: str) -> frozenset[str]:
    """The models whose row a record that failed in ``stage`` lacks: that model's and
    every later one's (models run in registry order; a record failed in one is not given
    to the next)."""
    keys = list(MODEL_KEYS)
    return frozenset(keys[keys.index(stage) :]) if stage in keys else frozenset()
