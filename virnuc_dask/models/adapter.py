"""What the batch runner needs of an embedding model: a :class:`ModelAdapter`
(tokenise, prepare a padded batch, forward to pooled rows, activation bytes per token).
Each model's module builds its own (``load_adapter``); the runner
(:mod:`virnuc_dask.worker.batch_runner`) does the rest, the same for every model.

>>> pad([[1, 2, 3], [4]], pad_id=0).tolist()
[[1, 2, 3], [4, 0, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

Tokens = Sequence[int]  # one sequence's token ids, special tokens included
Batch = dict[str, torch.Tensor]  # the tensors of one padded batch, by name


class ModelAdapter(Protocol):
    """One embedding model, as the runner drives it."""

    name: str  # in messages ("ESM-2")
    model: torch.nn.Module
    width: int  # columns of an embedding
    cpu_tokens: int  # token budget on the CPU
    tokenize_slice: int | None  # texts tokenised at a time; None: all at once

    def token_bound(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text before tokenising: an upper bound (exact where it can be)."""

    def tokenize(self, texts: Sequence[str]) -> list[Tokens]:
        """Token ids of each text, special tokens included."""

    def prepare(self, tokens: Sequence[Tokens], lengths: np.ndarray) -> Batch:
        """The host tensors of one padded batch."""

    def forward(self, batch: Batch) -> torch.Tensor:
        """Pooled float32 rows ``[len(batch), width]``."""

    def bytes_per_token(self, longest: int) -> int:
        """Activation bytes one token needs when the longest sequence has ``longest``."""


def pad(token_lists: Sequence[Tokens], pad_id: int) -> torch.Tensor:
    """``[len(token_lists), longest]`` token ids, right-padded with ``pad_id``."""
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    for row, toks in enumerate(token_lists):
        ids[row, : len(toks)] = torch.as_tensor(toks, dtype=torch.long)
    return ids


def parameter_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of most of ``model``'s weights (by element count)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32
