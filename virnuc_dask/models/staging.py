"""Models for air-gapped nodes: ``virnuc-dask models fetch --to DIR``.

Compute nodes of HPC clusters often cannot reach the internet. ``models fetch``
runs once where downloads work, and puts both embedding models into ``DIR`` in
the layout that ``--model-cache DIR`` reads, with the libraries' own hub layouts:

::

    DIR/torch/checkpoints/esm2_t36_3B_UR50D.pt                      fair-esm hub files
    DIR/torch/checkpoints/esm2_t36_3B_UR50D-contact-regression.pt
    DIR/huggingface/models--zhihan1996--DNABERT-S/                  Hugging Face hub cache
        refs/main, snapshots/<revision>/{config.json, pytorch_model.bin | model.safetensors,
                                         tokenizer.json, ...}

Runs given ``--model-cache DIR --offline`` then load from there and never touch
the network. Downloads go through the same resolvers as a run: ESM-2 under a file
lock per model (the workers of one node never download it concurrently), DNABERT-S
through ``huggingface_hub``, which locks each file of the cache while it downloads.
After downloading, the directory is checked the way an offline run reads it.

Usage::

    layout = StagedModels.check("models", esm_model="esm2_t36_3B_UR50D",
                                dnabert_model="zhihan1996/DNABERT-S")
    layout.esm  # PosixPath('models/torch/checkpoints/esm2_t36_3B_UR50D.pt')
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from virnuc_dask.config import Settings
from virnuc_dask.errors import ModelLoadError

logger = logging.getLogger(__name__)

ESM_SUBDIR = "torch"
DNABERT_SUBDIR = "huggingface"


def esm_cache(root: str | os.PathLike[str]) -> Path:
    """The torch hub directory of a model cache (fair-esm files in ``checkpoints/``)."""
    return Path(root) / ESM_SUBDIR


def dnabert_cache(root: str | os.PathLike[str]) -> Path:
    """The Hugging Face hub cache directory of a model cache."""
    return Path(root) / DNABERT_SUBDIR


@dataclasses.dataclass(frozen=True)
class StagedModels:
    """The files a run with ``--model-cache root --offline`` loads."""

    root: Path
    esm_model: str
    dnabert_model: str
    esm: Path
    dnabert: Path

    @classmethod
    def check(
        cls, root: str | os.PathLike[str], *, esm_model: str, dnabert_model: str
    ) -> StagedModels:
        """Resolve both models strictly offline from ``root``; ModelLoadError if incomplete."""
        from virnuc_dask.models.dnabert import resolve_dnabert_dir
        from virnuc_dask.models.esm2 import resolve_esm_path

        root = Path(root)
        try:
            esm = resolve_esm_path(esm_model, cache_dir=esm_cache(root), offline=True)
            dnabert = resolve_dnabert_dir(
                dnabert_model, cache_dir=str(dnabert_cache(root)), offline=True
            )
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{root}: incomplete model cache: {exc}") from None
        return cls(root, esm_model, dnabert_model, esm, dnabert)

    def files(self) -> list[Path]:
        regression = self.esm.with_name(self.esm.stem + "-contact-regression.pt")
        return [self.esm, regression, *sorted(p for p in self.dnabert.iterdir() if p.is_file())]

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())


def fetch_models(
    root: str | os.PathLike[str], *, esm_model: str, dnabert_model: str
) -> StagedModels:
    """Download both models into ``root`` (files already there are kept) and check them."""
    from virnuc_dask.models.dnabert import resolve_dnabert_dir
    from virnuc_dask.models.esm2 import is_local_model, resolve_esm_path

    if is_local_model(esm_model) or Path(dnabert_model).expanduser().exists():
        raise ModelLoadError(
            "models fetch downloads hub models: give a fair-esm name (esm2_t36_3B_UR50D) and "
            "a Hugging Face id (zhihan1996/DNABERT-S), not local paths"
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    advice = (
        "`models fetch` must run where downloads work (a login node or a machine with "
        "internet access); copy the directory to the cluster afterwards"
    )
    try:
        logger.info("fetching ESM-2 %s into %s", esm_model, esm_cache(root))
        resolve_esm_path(esm_model, cache_dir=esm_cache(root), offline=False)
        logger.info("fetching DNABERT-S %s into %s", dnabert_model, dnabert_cache(root))
        resolve_dnabert_dir(dnabert_model, cache_dir=str(dnabert_cache(root)), offline=False)
    except ModelLoadError as exc:
        first = " ".join(str(exc).split("\n")[:1])
        raise ModelLoadError(f"{first}; {advice}") from None
    return StagedModels.check(root, esm_model=esm_model, dnabert_model=dnabert_model)


def usage_hint(staged: StagedModels) -> str:
    """How to point runs at the staged models."""
    defaults = Settings()
    models = ""
    if staged.esm_model != defaults.esm_model:
        models += f" --esm-model {staged.esm_model}"
    if staged.dnabert_model != defaults.dnabert_model:
        models += f" --dnabert-model {staged.dnabert_model}"
    return (
        f"Copy {staged.root} to a file system the compute nodes read (or fetch straight "
        f"into one), then run:\n"
        f"  virnuc-dask predict READS.fa --classifier 500_model.pth{models} "
        f"--model-cache {staged.root} --offline --out RESULTS\n"
        f"or put `model_cache: {staged.root}` and `offline: true` in a --config file."
    )


# -- `virnuc-dask models fetch` ------------------------------------------------------------
