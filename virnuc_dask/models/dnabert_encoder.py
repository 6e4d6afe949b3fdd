"""Native PyTorch DNABERT-S encoder (DNABERT-2 / MosaicBERT architecture).

DNABERT-S ships as ``trust_remote_code`` modelling code that neither builds under
transformers 5 nor compiles its Triton kernel, so this module re-implements the encoder
and loads the published checkpoint by key name. Architecture, as in the published code:

* embeddings: word + token-type (always type 0) embeddings, LayerNorm; no position
  embeddings (ALiBi carries position);
* each layer: fused ``Wqkv`` projection, softmax attention scaled by ``1/sqrt(head_dim)``
  with an additive ALiBi bias ``-slope_h * |i - j|``, output projection, residual and
  post-LayerNorm; then a gated MLP ``wo(gelu(a) * b)`` where ``a``/``b`` are the first/second
  half of ``gated_layers(x)`` (exact erf GELU), residual and post-LayerNorm;
* the model output is the last layer's hidden state for every position.

Padded batches are computed with ``scaled_dot_product_attention`` and an additive float
mask (ALiBi, with padded keys set to the dtype's minimum), so a sequence gives the same
result alone or in a padded batch up to float rounding. The transformers library is not used.
Finding, reading and loading the published files, and the tokenizer: :mod:`.dnabert`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.compiled import LayerFunction, mark_dynamic

logger = logging.getLogger(__name__)

# Checkpoint keys that are not part of the encoder: MLM head, CLS pooler, old buffers.
_IGNORED_KEY = re.compile(r"^(cls\.|pooler\.|embeddings\.(position_ids|token_type_ids)$)")


@dataclass(frozen=True)
class DnabertConfig:
    """The subset of the published ``config.json`` that defines the encoder."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-12
    alibi_starting_size: int = 512
    type_vocab_size: int = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: str | Path) -> DnabertConfig:
        raw = json.loads(Path(path).read_text())
        required = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        )
        missing = [k for k in required if k not in raw]
        if missing:
            raise ValueError(f"{path}: config lacks {', '.join(missing)}")
        optional = ("layer_norm_eps", "alibi_starting_size", "type_vocab_size")
        kwargs = {k: raw[k] for k in (*required, *optional) if k in raw}
        if "layer_norm_eps" in kwargs:
            kwargs["layer_norm_eps"] = float(kwargs["layer_norm_eps"])
        return cls(**kwargs)


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes; for a non-power-of-2 count, the nearest lower power of 2's slopes
    followed by every other slope of the next power of 2 (as in MosaicBERT)."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    lower = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(lower) + alibi_slopes(2 * lower)[0::2][: n_heads - lower]


def build_alibi(size: int, n_heads: int, device: torch.device | str | None = None) -> Tensor:
    """``[n_heads, size, size]`` float32 bias ``-slope_h * |i - j|``.

    Computed like the original (float32 slopes times integer distances), whose tensor,
    rebuilt at the input length when longer than ``alibi_starting_size``, holds the same
    value for every (i, j) whatever its size; so slicing a larger tensor is exact.
    """
    pos = torch.arange(size, device=device)
    distance = (pos[None, :] - pos[:, None]).abs()
    slopes = torch.tensor(alibi_slopes(n_heads), dtype=torch.float32, device=device)
    return slopes[:, None, None] * -distance


class _Embeddings(nn.Module):
    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        # token_type_ids are all zero in the original: add row 0 everywhere.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, t, h = x.shape
        qkv = self.Wqkv(x).view(b, t, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, head_dim]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale 1/sqrt(hd)
        return out.transpose(1, 2).reshape(b, t, h)


class _SelfOutput(nn.Module):
    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, attended: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(attended) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _SelfOutput(cfg)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.output(self.self(x, bias), x)


class _GatedMLP(nn.Module):
    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gated_layers = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        gated, linear = self.gated_layers(x).split(self.intermediate_size, dim=-1)
        return self.layernorm(self.wo(F.gelu(gated) * linear) + x)


class _Layer(nn.Module):
    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.mlp = _GatedMLP(cfg)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.mlp(self.attention(x, bias))


def dnabert_layer(layer: _Layer, x: Tensor, bias: Tensor, pad_rows: Tensor | None) -> Tensor:
    """One DNABERT-S layer on ``x`` ``[B, T, H]`` with the additive attention ``bias``, and
    ``pad_rows`` zeroed: the function compiled (its submodules' hooks run when it is not)."""
    x = layer(x, bias)
    return x if pad_rows is None else x.masked_fill(pad_rows, 0.0)


class _Encoder(nn.Module):
    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class DnabertS(nn.Module):
    """DNABERT-S encoder; parameter names match the published checkpoint (no ``bert.``)."""

    def __init__(self, config: DnabertConfig, *, compile_layers: bool = False) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.layer_function = LayerFunction(dnabert_layer, compile_layers)
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        # (device, dtype) -> [heads, S, S] ALiBi, S >= every length seen; sliced per batch.
        self._alibi_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def compile_layers(self, on: bool = True) -> DnabertS:
        """Run the layers through ``torch.compile`` (or not); see :mod:`.compiled`."""
        self.layer_function = LayerFunction(dnabert_layer, on)
        return self

    def _alibi(self, length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        cached = self._alibi_cache.get(key)
        if cached is None or cached.shape[-1] < length:
            size = max(length, self.config.alibi_starting_size)
            if cached is not None:  # grow geometrically-ish to avoid rebuilding per batch
                size = max(size, min(2 * cached.shape[-1], length + 512))
            logger.debug("building ALiBi bias %d x %d on %s/%s", size, size, device, dtype)
            cached = build_alibi(size, self.config.num_attention_heads, device).to(dtype)
            self._alibi_cache[key] = cached
        return cached[:, :length, :length]

    def attention_bias(self, attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
        """``[B, heads, T, T]`` additive mask: ALiBi, padded keys at the dtype's minimum.

        A finite minimum (not -inf) keeps even an all-padding row NaN-free, and
        ``masked_fill`` (not addition) keeps it from overflowing to -inf in half precision.
        """
        t = attention_mask.shape[1]
        alibi = self._alibi(t, attention_mask.device, dtype)
        key_pad = ~attention_mask[:, None, None, :]
        return alibi.unsqueeze(0).masked_fill(key_pad, torch.finfo(dtype).min)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Last hidden state ``[B, T, H]``; padded positions are set to zero."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
        x = self.embeddings(input_ids)
        bias = self.attention_bias(mask, x.dtype)
        pad_rows = ~mask[..., None]
        padded = input_ids.device.type != "cpu" or bool(pad_rows.any())
        # No real row attends to a padded one, but a padded row that overflowed would
        # reach them through 0 x inf = NaN in the attention's values: zeroed per layer.
        layer_pad = pad_rows if padded else None
        mark_dynamic(x, layer_pad)
        mark_dynamic(bias, dims=(0, 2, 3))
        for layer in self.encoder.layer:
            x = self.layer_function(layer, x, bias, layer_pad)
        return x.masked_fill(pad_rows, 0.0)

    def load_checkpoint(self, state_dict: Mapping[str, Tensor], *, source: str = "") -> None:
        """Load a published state dict (optional ``bert.`` prefix; MLM head/pooler ignored).

        Raises ModelLoadError naming missing, unexpected or mis-shaped keys.
        """
        where = f" in {source}" if source else ""
        if any(k.startswith("bert.") for k in state_dict):
            state_dict = {k.removeprefix("bert."): v for k, v in state_dict.items()}
        wanted = self.state_dict()
        kept = {k: v for k, v in state_dict.items() if not _IGNORED_KEY.match(k)}
        missing = sorted(set(wanted) - set(kept))
        unexpected = sorted(set(kept) - set(wanted))
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        for k in sorted(set(wanted) & set(kept)):
            if not isinstance(kept[k], Tensor):
                problems.append(f"{k} is a {type(kept[k]).__name__}, not a tensor")
            elif kept[k].shape != wanted[k].shape:
                problems.append(
                    f"{k} has shape {tuple(kept[k].shape)}, model expects {tuple(wanted[k].shape)}"
                )
        if problems:
            raise ModelLoadError(
                f"DNABERT-S checkpoint{where} does not fit: " + "; ".join(problems)
            )
        self.load_state_dict(kept, strict=True)
        self._alibi_cache.clear()


def mean_pool_all_tokens(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over the non-padding positions (``[CLS]``/``[SEP]`` included), in float32."""
    keep = attention_mask.to(device=hidden.device, dtype=torch.bool).unsqueeze(-1)
    # where, not a product with the mask: NaN x 0 is NaN, a padded NaN must not count.
    total = torch.where(keep, hidden.to(torch.float32), 0.0).sum(dim=1)
    return total / keep.sum(dim=1).clamp_min(1).to(torch.float32)
