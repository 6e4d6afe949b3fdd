"""ESM-2 through fair-esm: resolve a hub name or a local ``.pt``, load it safely.

fair-esm keeps its hub checkpoints as ``<torch hub dir>/checkpoints/<name>.pt``
with ``<name>-contact-regression.pt`` beside them. A hub name is resolved to
that file (downloaded once, under a file lock so that the workers of one node
never download concurrently), then every load goes through
``esm.pretrained.load_model_and_alphabet_local``: one way to load, whether the
file came from the hub, a pre-staged directory or the user.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import urllib.request
from pathlib import Path

import filelock
import torch

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.safeload import allowing

logger = logging.getLogger(__name__)

HUB_URL = "https://dl.fbaipublicfiles.com/fair-esm"


def hub_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where fair-esm hub checkpoints live: ``cache_dir`` or torch's hub directory."""
    base = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir())
    return base / "checkpoints"


def is_local_model(source: str) -> bool:
    return source.endswith(".pt") or os.sep in source or Path(source).exists()


def _download(url: str, dest: Path) -> None:
    logger.info("downloading %s to %s", url, dest)
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url) as response, open(tmp, "wb") as fh:  # noqa: S310 (fixed https host)
        while block := response.read(1 << 20):
            fh.write(block)
    os.replace(tmp, dest)


def resolve_esm_path(
    source: str, *, cache_dir: str | os.PathLike[str] | None = None, offline: bool = False
) -> Path:
    """Return the local ``.pt`` file for ``source`` (hub name or path), fetching it if allowed."""
    if is_local_model(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{path}: ESM-2 model file not found")
        regression = path.with_name(path.stem + "-contact-regression.pt")
        if not regression.is_file():
            raise ModelLoadError(
                f"{regression}: missing; fair-esm expects the contact-regression file beside "
                f"{path.name}"
            )
        return path
    directory = hub_dir(cache_dir)
    files = [f"{source}.pt", f"{source}-contact-regression.pt"]
    if all((directory / name).is_file() for name in files):
        return directory / files[0]
    if offline:
        raise ModelLoadError(
            f"ESM-2 model {source!r} is not in {directory} and downloads are off (offline); "
            "stage it with `virnuc-dask models fetch`"
        )
    directory.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(directory / f"{source}.lock")):
        for name, sub in zip(files, ("models", "regression"), strict=True):
            if not (directory / name).is_file():
                try:
                    _download(f"{HUB_URL}/{sub}/{name}", directory / name)
                except OSError as exc:
                    raise ModelLoadError(
                        f"cannot download ESM-2 model {source!r} ({name}): {exc}"
                    ) from None
    return directory / files[0]


def read_checkpoint(path: Path) -> dict:
    """A fair-esm checkpoint under torch's safe loading, memory-mapped where the file's
    format allows: its tensors stay in the page cache (dropped after the weights are
    copied into the model) instead of being a second copy in the worker's memory,
    which for ESM-2 3B is 11 GB."""
    # fair-esm pickles its hyper-parameters as an argparse.Namespace; allow exactly that
    # class under torch's safe (weights-only) loading instead of disabling it.
    with allowing([argparse.Namespace]):
        try:
            return torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            logger.debug("%s: not memory-mappable (%s); reading it whole", path, exc)
            return torch.load(str(path), map_location="cpu", weights_only=True)


def load_esm(
    source: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool = False,
) -> tuple[torch.nn.Module, object]:
    """Load ESM-2 and its alphabet in eval mode on ``device``/``dtype``."""
    from esm import pretrained

    path = resolve_esm_path(source, cache_dir=cache_dir, offline=offline)
    try:
        model_data = read_checkpoint(path)
        regression = None
        if pretrained._has_regression_weights(path.stem):
            regression = read_checkpoint(path.with_name(path.stem + "-contact-regression.pt"))
        # fair-esm's own loader, given the data (what load_model_and_alphabet_local does
        # after its torch.load).
        model, alphabet = pretrained.load_model_and_alphabet_core(path.stem, model_data, regression)
        del model_data, regression
    except (
        pickle.UnpicklingError,
        RuntimeError,
        KeyError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
    ) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path}: not a loadable fair-esm ESM-2 checkpoint: {first}") from None
    if not hasattr(model, "num_layers") or not hasattr(model, "embed_dim"):
        raise ModelLoadError(f"{path}: loaded model is not ESM-2 ({type(model).__name__})")
    model.eval().to(device=device, dtype=dtype)
    return model, alphabet
