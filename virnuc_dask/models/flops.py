"""The FLOP model: what a forward pass of a transformer encoder costs, and the matrix
multiply rate a device attains; ``bench`` and ``validate`` count with the same model.

A forward pass over sequences of lengths ``n`` costs 2 FLOPs per weight per token plus
``QK^T`` and ``AV``: ``4 * width * n^2`` per sequence and layer. The shape of a model
comes from a loaded module (:func:`module_shape`) or, without loading it, from its
checkpoint or hub name (:func:`esm_source_shape`, :func:`dnabert_source_shape`).

>>> shape = ModelShape("2 layers x 64", layers=2, width=64, weights_per_layer=12 * 64 * 64)
>>> shape.flops(tokens=10, tokens_sq=100)
2017280.0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

ESM_SHAPES = {
    "esm2_t6_8M_UR50D": (6, 320),
    "esm2_t12_35M_UR50D": (12, 480),
    "esm2_t30_150M_UR50D": (30, 640),
    "esm2_t33_650M_UR50D": (33, 1280),
    "esm2_t36_3B_UR50D": (36, 2560),
    "esm2_t48_15B_UR50D": (48, 5120),
}
DNABERT_SHAPES = {"zhihan1996/DNABERT-S": (12, 768, 3072)}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the FLOP count of a transformer encoder needs."""

    name: str
    layers: int
    width: int
    weights_per_layer: int
    head_weights: int = 0

    def flops_of(self, lengths: np.ndarray) -> float:
        """Forward FLOPs of sequences of ``lengths`` tokens, each in its own unpadded batch."""
        lengths = np.asarray(lengths, dtype=np.float64)
        return self.flops(float(lengths.sum()), float((lengths**2).sum()))

    def as_dict(self) -> dict[str, int]:
        return {
            "params": self.layers * self.weights_per_layer + self.head_weights,
            "width": self.width,
            "layers": self.layers,
        }

    def flops(self, tokens: float, tokens_sq: float) -> float:
        """Forward FLOPs of sequences with ``sum(n) = tokens``, ``sum(n**2) = tokens_sq``:
        2 per weight per token, plus ``QK^T`` and ``AV`` (``4 * width * n`` per token per layer).
        """
        weights = self.layers * self.weights_per_layer + self.head_weights
        return 2.0 * weights * tokens + 4.0 * self.layers * self.width * tokens_sq


def esm_source_shape(source: str) -> ModelShape | None:
    """Shape of an ESM-2 hub name or local ``.pt``; None if neither is known here."""
    name = Path(source).name.removesuffix(".pt")
    shape = ESM_SHAPES.get(name)
    if shape is None and Path(source).is_file():
        shape = _esm_file_shape(source)
    if shape is None:
        return None
    layers, d = shape
    # attention 4 d^2, feed-forward 2 * d * 4d; fair-esm's forward also runs its LM head
    return ModelShape(f"{layers} layers x {d}", layers, d, 12 * d * d, head_weights=d * d + 33 * d)


def _esm_file_shape(path: str) -> tuple[int, int] | None:
    import torch

    from virnuc_dask.models.safeload import allowing

    try:
        with allowing([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        cfg = data["cfg"]["model"]
        return int(cfg.encoder_layers), int(cfg.encoder_embed_dim)
    except (OSError, RuntimeError, KeyError, AttributeError, TypeError, ValueError) as exc:
        logger.warning("%s: cannot read the ESM-2 shape (%s); no estimate", path, exc)
        return None


def dnabert_source_shape(source: str, model_cache: str | None = None) -> ModelShape | None:
    """Shape of a DNABERT-S directory or hub id (from its config.json where available)."""
    config = _dnabert_config_path(source, model_cache)
    if config is not None:
        values = json.loads(Path(config).read_text())
        shape = (
            int(values["num_hidden_layers"]),
            int(values["hidden_size"]),
            int(values["intermediate_size"]),
        )
    else:
        shape = DNABERT_SHAPES.get(source)
    if shape is None:
        return None
    layers, d, inner = shape
    # attention 4 d^2; gated MLP: d -> 2 * inner (gate and value), inner -> d
    return ModelShape(f"{layers} layers x {d}", layers, d, 4 * d * d + 3 * d * inner)


def _dnabert_config_path(source: str, model_cache: str | None) -> str | None:
    if Path(source).is_dir():
        path = Path(source) / "config.json"
        return str(path) if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(source, "config.json", cache_dir=model_cache)
    return found if isinstance(found, str) else None


def module_shape(model: Any) -> ModelShape:
    """The shape of a loaded ESM-2 (fair-esm's or the SDPA wrapper) or DNABERT-S module,
    counting the weights of its layers' ``nn.Linear`` modules."""
    import torch

    if hasattr(model, "embed_dim"):  # ESM-2
        layers, width, body = model.num_layers, model.embed_dim, model.layers
    else:  # DNABERT-S
        cfg = model.config
        layers, width, body = cfg.num_hidden_layers, cfg.hidden_size, model.encoder
    weights = sum(m.weight.numel() for m in body.modules() if isinstance(m, torch.nn.Linear))
    return ModelShape(
        f"{layers} layers x {width}",
        layers,
        width,
        weights // layers,
        head_weights=weights % layers,
    )


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    size: int | None = None,
    repeats: int = 5,
    rounds: int = 3,
) -> float:
    """Best FLOP/s of ``size`` x ``size`` GEMMs on ``device`` (the attainable peak)."""
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    with torch.inference_mode():
        a @ b
        _sync(device)
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(repeats):
                a @ b
            _sync(device)
            best = min(best, (time.perf_counter() - t) / repeats)
    return 2.0 * n**3 / best


@dataclasses.dataclass(frozen=True)
class PeakSweep:
    """The matmul rate a device attains in one precision, measured over several sizes.

    ``peak`` is the best FLOP/s of any round at any size, ``size`` the size that reached
    it, ``by_size`` the best rate per size, and ``spread`` how far the rounds at that
    size fell below their best (``1 - median / best``): a small spread says the peak is
    a property of the machine, not of one lucky or unlucky round.
    """

    dtype: str
    peak: float
    size: int
    by_size: dict[int, float]
    spread: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def peak_sweep(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    sizes: tuple[int, ...] | None = None,
    rounds: int = 3,
    min_seconds: float = 0.1,
) -> PeakSweep:
    """Square GEMMs of each of ``sizes``: two warm-up products (thread pools, the
    kernel's packing and, on CPUs with AMX, its tile setup), then ``rounds`` timed
    rounds of as many products as fill ``min_seconds``; see :class:`PeakSweep`."""
    device = torch.device(device)
    if sizes is None:
        sizes = (2048, 4096, 8192) if device.type == "cuda" else (512, 1024, 1536, 2048, 3072)
    by_size: dict[int, float] = {}
    rates_at: dict[int, list[float]] = {}
    with torch.inference_mode():
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            t = time.perf_counter()
            for _ in range(2):
                a @ b
            _sync(device)
            repeats = max(1, math.ceil(min_seconds / max((time.perf_counter() - t) / 2, 1e-6)))
            rates = []
            for _ in range(rounds):
                t = time.perf_counter()
                for _ in range(repeats):
                    a @ b
                _sync(device)
                rates.append(2.0 * n**3 * repeats / (time.perf_counter() - t))
            by_size[n] = max(rates)
            rates_at[n] = rates
            del a, b
    size = max(by_size, key=by_size.__getitem__)
    best = by_size[size]
    return PeakSweep(
        dtype=str(dtype).removeprefix("torch."),
        peak=best,
        size=size,
        by_size=by_size,
        spread=1.0 - float(np.median(rates_at[size])) / best,
    )
