"""ESM-2 through fair-esm: resolve a hub name or a local ``.pt``, load it safely.

fair-esm keeps its hub checkpoints as ``<torch hub dir>/checkpoints/<name>.pt``
with ``<name>-contact-regression.pt`` beside them. A hub name is resolved to
that file (downloaded once, under a file lock so that the workers of one node
never download concurrently), then every load goes the same way, whether the file
came from the hub, a pre-staged directory or the user: the checkpoint is read
memory-mapped under torch's safe loading, fair-esm's own code builds ESM-2 on the
``meta`` device (no random weights: for the 3B layout they would be 11 GB of host
memory) and the checkpoint's tensors are assigned to it, so that a worker's host
memory while loading stays near one copy of the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pickle
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.adapter import Batch, Tokens, pad, parameter_dtype
from virnuc_dask.models.safeload import allowing

logger = logging.getLogger(__name__)

HUB_URL = "https://dl.fbaipublicfiles.com/fair-esm"


# fair-esm pickles its hyper-parameters as an argparse.Namespace; exactly that class is
# allowed under torch's safe (weights-only) loading instead of disabling it.
CHECKPOINT_CLASSES = [argparse.Namespace]


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
    with allowing(CHECKPOINT_CLASSES):
        try:
            return torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            logger.debug("%s: not memory-mappable (%s); reading it whole", path, exc)
            return torch.load(str(path), map_location="cpu", weights_only=True)


def _build(name: str, model_data: dict, regression: dict | None) -> tuple[torch.nn.Module, object]:
    """fair-esm's ``load_model_and_alphabet_core`` for ESM-2, with the model built on the
    meta device and the checkpoint's tensors assigned to it (not copied)."""
    from esm import pretrained

    if not name.startswith("esm2"):  # ESM-1 layouts: fair-esm's own way
        return pretrained.load_model_and_alphabet_core(name, model_data, regression)
    if regression is not None:
        model_data["model"].update(regression["model"])
    with torch.device("meta"):
        model, alphabet, state = pretrained._load_model_and_alphabet_core_v2(model_data)
    expected, found = set(model.state_dict()), set(state)
    # Without its file the contact head (which embedding never uses) is left at zero,
    # as fair-esm leaves it untrained.
    optional = (
        {k for k in expected if k.startswith("contact_head.")} if regression is None else set()
    )
    if expected - found - optional or found - expected:
        raise RuntimeError(
            f"missing key(s) {sorted(expected - found - optional)[:5]}, unexpected key(s) "
            f"{sorted(found - expected)[:5]} in the state_dict of ESM2"
        )
    model.load_state_dict(state, strict=not optional, assign=True)
    for module in model.modules():
        for key, param in module.named_parameters(recurse=False):
            if param.is_meta:
                zeros = torch.zeros(param.shape, dtype=param.dtype)
                setattr(module, key, torch.nn.Parameter(zeros, param.requires_grad))
        for key, buffer in module.named_buffers(recurse=False):
            if buffer.is_meta:
                module.register_buffer(key, torch.zeros(buffer.shape, dtype=buffer.dtype))
    return model, alphabet


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
        model, alphabet = _build(path.stem, model_data, regression)
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


# -- the adapter the batch runner drives ---------------------------------------------------
#
# Pooling reproduces the original exactly: the mean of the last layer over residue
# positions ``1..len`` (no BOS/EOS), capped at the first 1024 residues as the original's
# ``truncation_seq_length`` does for the average (its tokens themselves are not truncated).

ESM_MEAN_MAX_RESIDUES = 1024
# CPU budgets: on 2 AVX-512 cores with the bench models (ESM-2 6 x 320, DNABERT-S 2 x 256)
# throughput was flat from 2048 to 16384 tokens (within the noise of a shared machine);
# these are at the fast end and keep batches, hence padding, small.
CPU_TOKS_PER_BATCH = 2048


def esm_bytes_per_token(model: torch.nn.Module, longest: int) -> int:
    """Activation bytes one token needs in an ESM-2 forward (peak inside a layer).

    About 16 hidden-size vectors live at once (residual, normed input, q/k/v and
    their rotations, attention output, the 4x MLP activation and its GELU), plus a
    float32 row of attention scores per head when SDPA takes its non-fused path.
    """
    elem = torch.finfo(parameter_dtype(model)).bits // 8
    heads = getattr(model, "attention_heads", getattr(model, "heads", 1))
    return elem * 16 * model.embed_dim + 4 * heads * longest + 4 * model.embed_dim


def esm_tokens(alphabet: object, proteins: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each protein, as ``alphabet.encode`` gives them for one-letter residues.

    A byte lookup table instead of fair-esm's per-sequence regex split (which dominated
    CPU time); proteins from six-frame translation never contain ``<...>`` tokens.
    """
    table = np.full(256, alphabet.unk_idx, dtype=np.int64)
    for tok, idx in alphabet.tok_to_idx.items():
        if len(tok) == 1 and ord(tok) < 256:
            table[ord(tok)] = idx
    return [table[np.frombuffer(p.encode("latin-1"), dtype=np.uint8)] for p in proteins]


@dataclasses.dataclass
class EsmAdapter:
    """ESM-2 for the runner: fair-esm's ESM2 or an :class:`.esm_fast.SdpaEsm2` (same call)."""

    model: torch.nn.Module
    alphabet: object
    name: str = "ESM-2"
    cpu_tokens: int = CPU_TOKS_PER_BATCH
    # A table lookup: cheap, and exact lengths make the first batches the longest.
    tokenize_slice: int | None = None

    @property
    def width(self) -> int:
        return self.model.embed_dim

    @property
    def heads(self) -> int:
        return getattr(self.model, "heads", None) or self.model.attention_heads

    def token_bound(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(p) + 2 for p in texts], dtype=np.int64)

    def tokenize(self, texts: Sequence[str]) -> list[Tokens]:
        a = self.alphabet
        return [np.concatenate(([a.cls_idx], t, [a.eos_idx])) for t in esm_tokens(a, texts)]

    def prepare(self, tokens: Sequence[Tokens], lengths: np.ndarray) -> Batch:
        residues = torch.as_tensor(np.minimum(lengths - 2, ESM_MEAN_MAX_RESIDUES))
        return {"ids": pad(tokens, self.alphabet.padding_idx), "residues": residues}

    def forward(self, batch: Batch) -> torch.Tensor:
        layer = self.model.num_layers
        rep = self.model(batch["ids"], repr_layers=[layer])["representations"][layer]
        n = batch["residues"]
        pos = torch.arange(rep.shape[1], device=rep.device)
        keep = (pos[None, :] >= 1) & (pos[None, :] <= n[:, None])
        # where, not a product with the mask: a NaN at a padded position (NaN x 0 = NaN)
        # must not reach the real rows' sum.
        summed = torch.where(keep[..., None], rep.float(), 0.0).sum(dim=1)
        return summed / n[:, None]

    def bytes_per_token(self, longest: int) -> int:
        return esm_bytes_per_token(self.model, longest)


def load_adapter(source: str, **options: Any) -> EsmAdapter:
    """ESM-2 from ``source`` for the batch runner (the options of :func:`load_esm`), its
    layers through fused attention kernels (:class:`~virnuc_dask.models.esm_fast.SdpaEsm2`;
    fp32 agreement with fair-esm's forward is tested in tests/test_esm_fast.py)."""
    from virnuc_dask.models.esm_fast import SdpaEsm2

    model, alphabet = load_esm(source, **options)
    return EsmAdapter(SdpaEsm2(model), alphabet)


def load_module(source: str, **options: Any) -> torch.nn.Module:
    """fair-esm's ESM-2 module from ``source`` (the options of :func:`load_esm`)."""
    return load_esm(source, **options)[0]


def source_shape(source: str, model_cache: str | None = None) -> Any:
    """The layout of ESM-2 ``source`` for the FLOP count, without loading it (None:
    unknown)."""
    from virnuc_dask.models.flops import esm_source_shape

    return esm_source_shape(source)


ORIGINAL_TOKS_PER_BATCH = 2048


@torch.inference_mode()
def original_embed(
    adapter: EsmAdapter, proteins: Sequence[str], *, device: torch.device
) -> np.ndarray:
    """ESM-2 the original way: fair-esm's ``FastaBatchedDataset`` batches of 2048 tokens,
    its batch converter and its own forward (not the SDPA one the adapter may run); mean
    over residues ``1..min(len, 1024)``."""
    from esm import FastaBatchedDataset

    model, alphabet = getattr(adapter.model, "esm", adapter.model), adapter.alphabet
    dataset = FastaBatchedDataset([str(i) for i in range(len(proteins))], list(proteins))
    batches = dataset.get_batch_indices(ORIGINAL_TOKS_PER_BATCH, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(
        dataset, collate_fn=alphabet.get_batch_converter(), batch_sampler=batches
    )
    out = np.zeros((len(proteins), model.embed_dim), dtype=np.float32)
    layer = model.num_layers
    for labels, strs, toks in loader:
        rep = model(toks.to(device), repr_layers=[layer])["representations"][layer]
        for i, label in enumerate(labels):
            n = min(ESM_MEAN_MAX_RESIDUES, len(strs[i]))
            out[int(label)] = rep[i, 1 : n + 1].mean(0).float().cpu().numpy()
    return out
