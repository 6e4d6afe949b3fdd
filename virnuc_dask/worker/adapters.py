"""Per-ORF embeddings of each model: the two :class:`~.batch_runner.ModelAdapter` s.

Pooling reproduces the original exactly:

- DNABERT-S: mean of the last hidden state over *all* tokens of the sequence,
  ``[CLS]`` and ``[SEP]`` included (the original embeds one unpadded sequence
  per call and averages every position); padding is masked out here.
- ESM-2: mean of the last layer over residue positions ``1..len`` (no BOS/EOS),
  capped at the first 1024 residues as the original's ``truncation_seq_length``
  does for the average (its tokens themselves are not truncated).

Batching, prefetch, OOM halving and the fp32 recompute are the runner's
(:func:`.batch_runner.embed`), the same for both models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from virnuc_dask.core.batching import TokenBudget
from virnuc_dask.models import MODEL_NAMES
from virnuc_dask.worker.batch_runner import Batch, StageStats, Tokens, embed, pad
from virnuc_dask.worker.precision import parameter_dtype

ESM_MEAN_MAX_RESIDUES = 1024
# CPU budgets: on 2 AVX-512 cores with the bench models (ESM-2 6 x 320, DNABERT-S 2 x 256)
# throughput was flat from 2048 to 16384 tokens (within the noise of a shared machine);
# these are at the fast end and keep batches, hence padding, small.
CPU_TOKS_PER_BATCH = {"esm": 2048, "dnabert": 4096}
DNABERT_TOKENIZE_SLICE = 512


def esm_bytes_per_token(model: torch.nn.Module, longest: int) -> int:
    """Activation bytes one token needs in an ESM-2 forward (peak inside a layer).

    About 16 hidden-size vectors live at once (residual, normed input, q/k/v and
    their rotations, attention output, the 4x MLP activation and its GELU), plus a
    float32 row of attention scores per head when SDPA takes its non-fused path.
    """
    elem = torch.finfo(parameter_dtype(model)).bits // 8
    heads = getattr(model, "attention_heads", getattr(model, "heads", 1))
    return elem * 16 * model.embed_dim + 4 * heads * longest + 4 * model.embed_dim


def dnabert_bytes_per_token(model: torch.nn.Module, longest: int) -> int:
    """Activation bytes one token needs in a DNABERT-S forward: about 24 hidden-size
    vectors (gated MLP of 2 x 4 x hidden) plus its materialised ALiBi/padding bias row
    per head."""
    cfg = model.config
    elem = torch.finfo(parameter_dtype(model)).bits // 8
    return elem * (24 * cfg.hidden_size + cfg.num_attention_heads * longest) + 4 * cfg.hidden_size


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
    name: str = MODEL_NAMES["esm"]
    cpu_tokens: int = CPU_TOKS_PER_BATCH["esm"]
    # A table lookup: cheap, and exact lengths make the first batches the longest.
    tokenize_slice: int | None = None

    @property
    def width(self) -> int:
        return self.model.embed_dim

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


@dataclasses.dataclass
class DnabertAdapter:
    """DNABERT-S for the runner: the native model and its ``tokenizers`` tokenizer."""

    model: torch.nn.Module
    tokenizer: object
    name: str = MODEL_NAMES["dnabert"]
    cpu_tokens: int = CPU_TOKS_PER_BATCH["dnabert"]
    # BPE is slow: slices let the first batch start while the rest is tokenised.
    tokenize_slice: int | None = DNABERT_TOKENIZE_SLICE

    @property
    def width(self) -> int:
        return self.model.hidden_size

    def token_bound(self, texts: Sequence[str]) -> np.ndarray:
        # At most one token per base, plus [CLS] and [SEP].
        return np.array([len(s) + 2 for s in texts], dtype=np.int64)

    def tokenize(self, texts: Sequence[str]) -> list[Tokens]:
        return self.tokenizer.encode(list(texts))

    def prepare(self, tokens: Sequence[Tokens], lengths: np.ndarray) -> Batch:
        ids = pad(tokens, self.tokenizer.pad_id)
        # From lengths, not from `ids != pad`: a real token may share the padding id.
        mask = torch.arange(ids.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]
        return {"ids": ids, "mask": mask}

    def forward(self, batch: Batch) -> torch.Tensor:
        from virnuc_dask.models.dnabert_encoder import mean_pool_all_tokens

        hidden = self.model(batch["ids"], batch["mask"])
        return mean_pool_all_tokens(hidden, batch["mask"])

    def bytes_per_token(self, longest: int) -> int:
        return dnabert_bytes_per_token(self.model, longest)


def embed_esm(
    model: torch.nn.Module,
    alphabet: object,
    proteins: Sequence[str],
    *,
    toks_per_batch: int | None = None,
    device: torch.device | str = "cpu",
    prefetch: bool = True,
    budget: TokenBudget | None = None,
) -> tuple[np.ndarray, StageStats]:
    """ESM-2 mean embeddings ``[len(proteins), embed_dim]`` (float32), rows in input order."""
    return embed(
        EsmAdapter(model, alphabet),
        proteins,
        toks_per_batch=toks_per_batch,
        device=device,
        prefetch=prefetch,
        budget=budget,
    )


def embed_dnabert(
    model: torch.nn.Module,
    tokenizer: object,
    sequences: Sequence[str],
    *,
    toks_per_batch: int | None = None,
    device: torch.device | str = "cpu",
    prefetch: bool = True,
    budget: TokenBudget | None = None,
) -> tuple[np.ndarray, StageStats]:
    """DNABERT-S mean embeddings ``[len(sequences), hidden_size]`` (float32), input order."""
    return embed(
        DnabertAdapter(model, tokenizer),
        sequences,
        toks_per_batch=toks_per_batch,
        device=device,
        prefetch=prefetch,
        budget=budget,
    )
