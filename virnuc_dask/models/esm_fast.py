"""ESM-2 forward through ``scaled_dot_product_attention``, on a loaded fair-esm model.

fair-esm's attention materialises every ``[T, T]`` score matrix with ``bmm`` and a
float32 softmax. :class:`SdpaEsm2` computes the same layers with
``torch.nn.functional.scaled_dot_product_attention`` (flash or memory-efficient
kernels on GPU, the fused flash kernel on CPU), calling the fair-esm model's own
submodules and parameters — nothing is copied:

* token embedding, then fair-esm's ``token_dropout`` rescaling
  ``x * (1 - 0.15 * 0.8) / (1 - masked / length)`` and zeroed padding rows;
* per layer, pre-LayerNorm attention: ``q_proj``, ``k_proj``, ``v_proj``, rotary
  embeddings on ``q`` and ``k`` (positions ``0..T-1``), attention scaled by
  ``head_dim ** -0.5`` with padded keys masked, ``out_proj``, residual;
  pre-LayerNorm ``fc2(gelu(fc1(x)))`` (exact erf GELU), residual;
* ``emb_layer_norm_after`` on the last layer.

Each layer is one function, :func:`esm_layer`, of the layer module and tensors; with
``compile_layers=True`` it runs through ``torch.compile`` (one graph for every layer
and batch shape: the layers' parameters are the graph's inputs, see :mod:`.compiled`),
fusing the elementwise
passes (rotary, GELU, residual adds, LayerNorms, masking) between the matrix products.

The logits (``lm_head``) and contacts are not computed: embedding needs neither.
fp32 agreement with fair-esm's forward is tested (``tests/test_esm_fast.py``).

The rotary tables are built in float32 whatever the model's dtype, from the
standard ``inv_freq`` (checked against the model's buffer), then cast: fair-esm
itself builds them in the model's dtype, so a bf16 model rounds positions above
256 before taking their sine.

>>> import torch
>>> from esm.data import Alphabet
>>> from esm.model.esm2 import ESM2
>>> model = ESM2(num_layers=2, embed_dim=64, attention_heads=4,
...              alphabet=Alphabet.from_architecture("ESM-1b")).eval()
>>> fast = SdpaEsm2(model)
>>> tokens = torch.tensor([[0, 20, 4, 8, 2]])  # <cls> M L S <eos>
>>> reps = fast(tokens, repr_layers=[fast.num_layers])["representations"]
>>> reps[2].shape
torch.Size([1, 5, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from virnuc_dask.models.compiled import LayerFunction, mark_dynamic

# fair-esm trained with 15 % of positions selected, 80 % of those replaced by <mask>.
MASK_RATIO_TRAIN = 0.15 * 0.8


def rotary_inv_freq(head_dim: int) -> Tensor:
    """The rotary frequencies fair-esm's ``RotaryEmbedding`` builds, in float32."""
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


class SdpaEsm2(nn.Module):
    """A fair-esm ``ESM2`` whose representations are computed with SDPA attention.

    Call it like the fair-esm model: ``fast(tokens, repr_layers=[n])`` returns
    ``{"representations": {n: [B, T, E]}}`` for the requested layers (0 = embeddings,
    ``num_layers`` = last layer after the final LayerNorm).

    Usage::

        fast = SdpaEsm2(esm_model)        # shares esm_model's parameters
        fast = SdpaEsm2(esm_model, compile_layers=True)  # layer bodies compiled
        fast.to("cuda", torch.bfloat16)   # moves esm_model too

    """

    def __init__(self, model: nn.Module, *, compile_layers: bool = False) -> None:
        super().__init__()
        for name in (
            "layers",
            "embed_tokens",
            "emb_layer_norm_after",
            "num_layers",
            "embed_dim",
            "attention_heads",
            "padding_idx",
            "mask_idx",
        ):
            if not hasattr(model, name):
                raise TypeError(
                    f"{type(model).__name__} is not a fair-esm ESM2 model (no {name!r})"
                )
        self.esm = model
        self.num_layers: int = model.num_layers
        self.embed_dim: int = model.embed_dim
        self.heads: int = model.attention_heads
        self.head_dim = self.embed_dim // self.heads
        self.padding_idx: int = model.padding_idx
        self.mask_idx: int = model.mask_idx
        self.token_dropout: bool = bool(getattr(model, "token_dropout", False))
        self.embed_scale = getattr(model, "embed_scale", 1)
        inv_freq = rotary_inv_freq(self.head_dim)
        for n, layer in enumerate(model.layers):
            rot = getattr(layer.self_attn, "rot_emb", None)
            if rot is None:
                raise TypeError(
                    f"layer {n} of {type(model).__name__} has no rotary embedding; "
                    "not an ESM-2 layer"
                )
            stored = rot.inv_freq.detach().cpu()
            if not torch.allclose(
                stored.float(), inv_freq.to(stored.dtype).float(), rtol=0, atol=0
            ):
                raise ValueError(
                    f"layer {n}: rotary inv_freq differs from ESM-2's 1/10000^(2i/{self.head_dim})"
                )
        self.layer_function = LayerFunction(esm_layer, compile_layers)
        self._inv_freq = inv_freq  # float32, CPU; tables are built from it per device
        self._rotary: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def compile_layers(self, on: bool = True) -> SdpaEsm2:
        """Run the layers through ``torch.compile`` (or not); see :mod:`.compiled`."""
        self.layer_function = LayerFunction(esm_layer, on)
        return self

    @property
    def layers(self) -> nn.ModuleList:
        """fair-esm's layers (the weights this forward runs), as on its own module."""
        return self.esm.layers

    def _rotary_tables(
        self, length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """``cos`` and ``sin`` with the first half negated, ``[length, 1, head_dim]``.

        fair-esm rotates ``x * cos + cat(-x2, x1) * sin``; ``cat(-x2, x1) * sin`` equals
        ``roll(x, head_dim / 2) * signed_sin`` exactly (a negation is exact), and the
        roll saves the negation's pass over q and k.
        """
        key = (device, dtype)
        cached = self._rotary.get(key)
        if cached is None or cached[0].shape[0] < length:
            size = max(length, 2 * cached[0].shape[0] if cached is not None else 1024)
            t = torch.arange(size, dtype=torch.float32)
            freqs = torch.einsum("i,j->ij", t, self._inv_freq)  # as fair-esm
            emb = torch.cat((freqs, freqs), dim=-1)
            sin = emb.sin()
            half = self.head_dim // 2
            signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
            cached = (emb.cos().to(device, dtype)[:, None, :], signed.to(device, dtype)[:, None, :])
            self._rotary[key] = cached
        return cached[0][:length], cached[1][:length]

    def _embed(self, tokens: Tensor, padding_mask: Tensor) -> Tensor:
        x = self.embed_scale * self.esm.embed_tokens(tokens)
        if self.token_dropout:
            masked = tokens == self.mask_idx
            x = x.masked_fill(masked.unsqueeze(-1), 0.0)
            src_lengths = (~padding_mask).sum(-1)
            observed = masked.sum(-1).to(x.dtype) / src_lengths
            x = x * (1 - MASK_RATIO_TRAIN) / (1 - observed)[:, None, None]
        return x * (1 - padding_mask.unsqueeze(-1).type_as(x))

    def forward(
        self, tokens: Tensor, repr_layers: list[int] | tuple[int, ...] = ()
    ) -> dict[str, dict[int, Tensor]]:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tuple(tokens.shape)}")
        wanted = set(repr_layers)
        bad = sorted(n for n in wanted if not 0 <= n <= self.num_layers)
        if bad:
            raise ValueError(f"repr_layers {bad} out of range 0..{self.num_layers}")
        padding_mask = tokens.eq(self.padding_idx)
        x = self._embed(tokens, padding_mask)
        reps: dict[int, Tensor] = {}
        if 0 in wanted:
            reps[0] = x
        # [B, 1, 1, T] True where a key may be attended. Without padding, None lets SDPA
        # pick flash kernels; asking a CUDA tensor would wait for the GPU, so there the
        # mask is always passed (an all-True mask changes nothing).
        padded = tokens.device.type != "cpu" or bool(padding_mask.any())
        key_mask = (~padding_mask)[:, None, None, :] if padded else None
        cos, sin = self._rotary_tables(tokens.shape[1], x.device, x.dtype)
        pad_rows = padding_mask.unsqueeze(-1) if padded else None
        mark_dynamic(x, pad_rows)
        mark_dynamic(key_mask, dims=(0, 3))
        mark_dynamic(cos, sin, dims=(0,))
        for n, layer in enumerate(self.esm.layers, 1):
            x = self.layer_function(layer, x, cos, sin, key_mask, pad_rows, self.heads)
            if n in wanted and n != self.num_layers:
                reps[n] = x
        if self.num_layers in wanted:
            reps[self.num_layers] = self.esm.emb_layer_norm_after(x)
        return {"representations": reps}


def esm_layer(
    layer: nn.Module,
    x: Tensor,
    cos: Tensor,
    signed_sin: Tensor,
    key_mask: Tensor | None,
    pad_rows: Tensor | None,
    heads: int,
) -> Tensor:
    """One fair-esm ``TransformerLayer`` on ``x`` ``[B, T, E]``: the function compiled.

    Pre-LayerNorm attention (q, k, v, rotary on q and k, SDPA scaled by
    ``head_dim ** -0.5`` with ``key_mask``, output projection), residual; pre-LayerNorm
    ``fc2(gelu(fc1(x)))`` (exact erf GELU), residual; ``pad_rows`` zeroed. The layer's
    submodules are called (their hooks run when it is not compiled).
    """
    attn = layer.self_attn
    b, t, e = x.shape
    head_dim = e // heads
    half = head_dim // 2

    def rotated(y: Tensor) -> Tensor:  # [B, T, H, hd], rotary over the last dim
        y = y.view(b, t, heads, head_dim)
        return torch.addcmul(y * cos, y.roll(half, dims=-1), signed_sin)

    h = layer.self_attn_layer_norm(x)
    q = rotated(attn.q_proj(h)).transpose(1, 2)  # [B, H, T, hd] views
    k = rotated(attn.k_proj(h)).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, heads, head_dim).transpose(1, 2)
    # fair-esm scales q by head_dim ** -0.5 before the rotation; the rotation is
    # linear, so SDPA's scaling of the scores is the same up to rounding.
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=attn.scaling)
    x = x + attn.out_proj(attended.transpose(1, 2).reshape(b, t, e))
    x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
    # Padded rows are zeroed after every layer. No real row attends to them (their
    # keys are masked), so real rows do not change; but a padded row that overflowed
    # in half precision would otherwise reach every real row through 0 x inf = NaN
    # in the attention's product with the values.
    return x if pad_rows is None else x.masked_fill(pad_rows, 0.0)
