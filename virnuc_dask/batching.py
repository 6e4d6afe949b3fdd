"""Token-budget batching over length-sorted sequences (pure numpy).

Sequences are taken longest first, so that the largest batch, the one most
likely to exhaust device memory, runs first and fails early. A batch holds as
many sequences as fit ``count * longest <= toks_per_batch``; since lengths only
decrease inside a batch, padding is limited to the length spread of neighbours
in sorted order. The scheme is fair-esm's ``get_batch_indices`` turned around.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def token_budget_batches(
    lengths: Sequence[int] | np.ndarray, toks_per_batch: int
) -> list[np.ndarray]:
    """Group indices of ``lengths`` into batches of at most ``toks_per_batch`` padded tokens.

    A sequence longer than the budget gets a batch of its own. Every index appears
    in exactly one batch.

    >>> [b.tolist() for b in token_budget_batches([3, 10, 4, 9], 20)]
    [[1, 3], [2, 0]]
    """
    if toks_per_batch < 1:
        raise ValueError(f"toks_per_batch must be positive, got {toks_per_batch}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, toks_per_batch // longest)
        batches.append(order[start:start + size])
        start += size
    return batches


def padding_efficiency(lengths: Sequence[int] | np.ndarray, batches: list[np.ndarray]) -> float:
    """Real tokens divided by padded tokens over ``batches`` (1.0 = no padding)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches if len(b))
    return real / padded if padded else 1.0
