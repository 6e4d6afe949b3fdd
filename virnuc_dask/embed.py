"""Per-ORF embeddings: padded, masked, length-sorted batches through each model.

Pooling reproduces the original exactly:

- DNABERT-S: mean of the last hidden state over *all* tokens of the sequence,
  ``[CLS]`` and ``[SEP]`` included (the original embeds one unpadded sequence
  per call and averages every position); padding is masked out here.
- ESM-2: mean of the last layer over residue positions ``1..len`` (no BOS/EOS),
  capped at the first 1024 residues as the original's ``truncation_seq_length``
  does for the average (its tokens themselves are not truncated).

A batch that runs out of device memory is split in halves and retried, down to
one sequence; a single sequence that still does not fit raises
:class:`SequenceTooLarge` naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .batching import token_budget_batches

logger = logging.getLogger(__name__)

ESM_MEAN_MAX_RESIDUES = 1024


class SequenceTooLarge(RuntimeError):
    """One sequence alone does not fit in device memory."""

    def __init__(self, index: int, model: str, detail: str) -> None:
        super().__init__(f"{model}: out of memory on a single sequence ({detail})")
        self.index = index
        self.model = model


@dataclasses.dataclass
class StageStats:
    """What one embedding stage did for one partition."""

    sequences: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def is_oom(exc: BaseException) -> bool:
    """CUDA OOM, also when an allocator reports it as a plain RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _run_batches(
    batches: list[np.ndarray],
    lengths: np.ndarray,
    forward: Callable[[np.ndarray], np.ndarray],
    out: np.ndarray,
    stats: StageStats,
    model_name: str,
) -> None:
    pending = list(reversed(batches))
    while pending:
        idx = pending.pop()
        try:
            out[idx] = forward(idx)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(idx) == 1:
                raise SequenceTooLarge(int(idx[0]), model_name, str(exc).splitlines()[0]) from exc
            half = len(idx) // 2
            stats.oom_splits += 1
            logger.warning("%s: out of memory on a batch of %d; retrying in halves",
                           model_name, len(idx))
            pending.extend([idx[half:], idx[:half]])
            continue
        stats.batches += 1
        stats.real_tokens += int(lengths[idx].sum())
        stats.padded_tokens += int(lengths[idx].max()) * len(idx)


def _pad(token_lists: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    for row, toks in enumerate(token_lists):
        ids[row, : len(toks)] = torch.as_tensor(toks, dtype=torch.long)
    return ids


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


@torch.inference_mode()
def embed_esm(
    model: torch.nn.Module,
    alphabet: object,
    proteins: Sequence[str],
    *,
    toks_per_batch: int,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, StageStats]:
    """ESM-2 mean embeddings ``[len(proteins), embed_dim]`` (float32), rows in input order."""
    stats = StageStats(sequences=len(proteins))
    start = time.perf_counter()
    tokens = esm_tokens(alphabet, proteins)
    bos, eos, pad = alphabet.cls_idx, alphabet.eos_idx, alphabet.padding_idx
    lengths = np.array([len(t) + 2 for t in tokens], dtype=np.int64)
    layer = model.num_layers
    out = np.zeros((len(proteins), model.embed_dim), dtype=np.float32)

    def forward(idx: np.ndarray) -> np.ndarray:
        ids = _pad([[bos, *tokens[i].tolist(), eos] for i in idx], pad)
        out = model(ids.to(device, non_blocking=True), repr_layers=[layer])
        rep = out["representations"][layer]
        n = torch.as_tensor([min(ESM_MEAN_MAX_RESIDUES, len(tokens[i])) for i in idx],
                            device=rep.device)
        pos = torch.arange(rep.shape[1], device=rep.device)
        keep = (pos[None, :] >= 1) & (pos[None, :] <= n[:, None])
        summed = (rep.float() * keep[..., None]).sum(dim=1)
        return (summed / n[:, None]).cpu().numpy()

    if len(proteins):
        _run_batches(token_budget_batches(lengths, toks_per_batch), lengths, forward, out,
                     stats, "ESM-2")
    stats.seconds = time.perf_counter() - start
    return out, stats


@torch.inference_mode()
def embed_dnabert(
    model: torch.nn.Module,
    tokenizer: object,
    sequences: Sequence[str],
    *,
    toks_per_batch: int,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, StageStats]:
    """DNABERT-S mean embeddings ``[len(sequences), hidden_size]`` (float32), input order."""
    from .dnabert import mean_pool_all_tokens

    stats = StageStats(sequences=len(sequences))
    start = time.perf_counter()
    tokens = tokenizer.encode(list(sequences))
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    out = np.zeros((len(sequences), model.hidden_size), dtype=np.float32)

    def forward(idx: np.ndarray) -> np.ndarray:
        ids = _pad([tokens[i] for i in idx], tokenizer.pad_id)
        mask = _mask_from_lengths(lengths[idx], ids.shape[1])
        hidden = model(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))
        return mean_pool_all_tokens(hidden, mask.to(hidden.device)).float().cpu().numpy()

    if len(sequences):
        _run_batches(token_budget_batches(lengths, toks_per_batch), lengths, forward, out,
                     stats, "DNABERT-S")
    stats.seconds = time.perf_counter() - start
    return out, stats


def _mask_from_lengths(lengths: np.ndarray, width: int) -> torch.Tensor:
    # From lengths, not from `ids != pad`: a real token may share the padding id.
    return torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]
