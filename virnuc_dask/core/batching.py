"""Token-budget batching over length-sorted sequences (pure numpy).

Sequences are taken longest first, so that the largest batch, the one most
likely to exhaust device memory, runs first and fails early. A batch holds as
many sequences as fit ``count * longest <= toks_per_batch``; since lengths only
decrease inside a batch, padding is limited to the length spread of neighbours
in sorted order. The scheme is fair-esm's ``get_batch_indices`` turned around.

Large budgets (a GPU's) put many sequences in one batch, and with them a wide
length spread. So a batch is also closed early when the next sequence is
shorter than ``(1 - max_padding) * longest`` — once the batch already holds a
quarter of the budget, so that short tails still form batches large enough to
keep a device busy. On the perf inputs (2048-ORF partitions) this keeps padding
efficiency above 0.97 with budgets up to 65536 tokens, where plain greedy
filling falls to 0.93.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_PADDING = 0.05
MIN_FILL = 0.25


def token_budget_batches(
    lengths: Sequence[int] | np.ndarray,
    toks_per_batch: int,
    *,
    max_padding: float | None = MAX_PADDING,
    min_fill: float = MIN_FILL,
) -> list[np.ndarray]:
    """Group indices of ``lengths`` into batches of at most ``toks_per_batch`` padded tokens.

    A sequence longer than the budget gets a batch of its own. Every index appears
    in exactly one batch. ``max_padding=None`` fills every batch to the budget.

    >>> [b.tolist() for b in token_budget_batches([3, 10, 4, 9], 20)]
    [[1], [3], [2, 0]]
    >>> [b.tolist() for b in token_budget_batches([3, 10, 4, 9], 20, max_padding=None)]
    [[1, 3], [2, 0]]
    """
    if toks_per_batch < 1:
        raise ValueError(f"toks_per_batch must be positive, got {toks_per_batch}")
    if max_padding is not None and not 0 <= max_padding < 1:
        raise ValueError(f"max_padding must be in [0, 1) or None, got {max_padding}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(sorted_lengths[start]), 1)
        stop = min(n, start + max(1, toks_per_batch // longest))
        if max_padding is not None:
            # first position (at least the min_fill one) whose length is below the floor
            first_allowed = start + max(1, -(-int(min_fill * toks_per_batch) // longest))
            if first_allowed < stop:
                floor = (1 - max_padding) * longest
                short = np.flatnonzero(sorted_lengths[first_allowed:stop] < floor)
                if len(short):
                    stop = first_allowed + int(short[0])
        batches.append(order[start:stop])
        start = stop
    return batches


def padding_efficiency(lengths: Sequence[int] | np.ndarray, batches: list[np.ndarray]) -> float:
    """Real tokens divided by padded tokens over ``batches`` (1.0 = no padding)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches if len(b))
    return real / padded if padded else 1.0


def budget_from_memory(
    free_bytes: int,
    bytes_per_token: int,
    *,
    fraction: float = 0.5,
    minimum: int = 1024,
    maximum: int = 32768,
) -> int:
    """Tokens per batch whose activations fill ``fraction`` of ``free_bytes``, clipped.

    The ceiling keeps batches small enough for padding efficiency; beyond tens of
    thousands of tokens a GPU's matrix units gain nothing more.

    >>> budget_from_memory(40 * 2**30, 80_000)
    32768
    >>> budget_from_memory(2 * 2**30, 80_000)
    13421
    """
    if bytes_per_token < 1:
        raise ValueError(f"bytes_per_token must be positive, got {bytes_per_token}")
    return int(min(maximum, max(minimum, fraction * free_bytes // bytes_per_token)))


class TokenBudget:
    """Tokens per batch for one model on one device, learned from out-of-memory errors.

    ``ceiling`` is what the device's free memory (or the user) allows at the start of
    each call. An OOM on a batch of ``tokens`` padded tokens sets a learned limit of
    half of them, kept across calls, so that later batches are cut to fit instead of
    each failing first. After ``recover_after`` batches in a row that ran, the limit
    grows by ``growth``, back up to the ceiling (memory another process held may be
    free again); a limit still too large costs one more OOM, once per ``recover_after``
    batches.

    >>> budget = TokenBudget(recover_after=2, growth=2.0)
    >>> budget.start(4096)
    >>> budget.out_of_memory(4000); budget.current
    2000
    >>> budget.succeeded(); budget.succeeded(); budget.current
    4000
    >>> budget.succeeded(); budget.succeeded(); budget.current
    4096
    """

    def __init__(self, *, recover_after: int = 32, growth: float = 1.25, floor: int = 1) -> None:
        if recover_after < 1:
            raise ValueError(f"recover_after must be positive, got {recover_after}")
        if growth <= 1:
            raise ValueError(f"growth must be above 1, got {growth}")
        self.recover_after = recover_after
        self.growth = growth
        self.floor = floor
        self.ceiling: int | None = None
        self.limit: int | None = None
        self.streak = 0
        self.ooms = 0

    def start(self, ceiling: int) -> None:
        """The ceiling for the call about to run."""
        if ceiling < 1:
            raise ValueError(f"toks_per_batch must be positive, got {ceiling}")
        self.ceiling = ceiling

    @property
    def current(self) -> int:
        if self.ceiling is None:
            raise RuntimeError("TokenBudget.start(ceiling) was not called")
        return self.ceiling if self.limit is None else min(self.limit, self.ceiling)

    def out_of_memory(self, tokens: int) -> None:
        """A batch of ``tokens`` padded tokens did not fit."""
        self.ooms += 1
        self.streak = 0
        self.limit = max(self.floor, min(self.current, tokens) // 2)

    def succeeded(self) -> None:
        """A batch ran."""
        if self.limit is None:
            return
        self.streak += 1
        if self.streak >= self.recover_after:
            self.streak = 0
            self.limit = max(self.limit + 1, int(self.limit * self.growth))
            if self.ceiling is not None and self.limit >= self.ceiling:
                self.limit = None
