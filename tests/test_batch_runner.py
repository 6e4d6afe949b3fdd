"""The batch runner through a model adapter of its own: any model that follows the
protocol gets the same batching, input order, OOM halving and failure reports."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from virnuc_dask.core.batching import TokenBudget
from virnuc_dask.models.adapter import pad
from virnuc_dask.worker.batch_runner import SequenceTooLarge, embed


class CharMean(torch.nn.Module):
    """Mean of per-character embeddings: a model whose answer is known per sequence."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(128, width)
        self.fail_above: int | None = None  # raise an OOM for batches wider than this
        self.calls: list[tuple[int, int]] = []

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(ids.shape))
        if self.fail_above is not None and ids.numel() > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        summed = (self.table(ids) * mask[..., None]).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True)


@dataclasses.dataclass
class CharAdapter:
    model: CharMean
    name: str = "chars"
    cpu_tokens: int = 64
    tokenize_slice: int | None = 3
    tokenized: list[int] = dataclasses.field(default_factory=list)

    @property
    def width(self) -> int:
        return self.model.table.embedding_dim

    def token_bound(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(t) for t in texts], dtype=np.int64)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        self.tokenized.append(len(texts))
        return [[ord(c) for c in t] for t in texts]

    def prepare(self, tokens, lengths: np.ndarray) -> dict[str, torch.Tensor]:
        ids = pad(tokens, 0)
        return {
            "ids": ids,
            "mask": torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None],
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["ids"], batch["mask"])

    def bytes_per_token(self, longest: int) -> int:
        return 4 * self.width


TEXTS = ["ACGT", "A" * 30, "GATTACA", "C", "TTTTTTTTTTTT", "GC" * 9, "CAT", "A" * 25]


def alone(adapter: CharAdapter, text: str) -> np.ndarray:
    with torch.no_grad():
        ids = torch.tensor([[ord(c) for c in text]])
        return adapter.model(ids, torch.ones_like(ids, dtype=torch.bool))[0].numpy()


@pytest.mark.parametrize("prefetch", [True, False])
def test_rows_come_back_in_input_order_within_the_budget(prefetch):
    torch.manual_seed(0)
    adapter = CharAdapter(CharMean())
    out, stats = embed(adapter, TEXTS, toks_per_batch=40, prefetch=prefetch)
    calls = list(adapter.model.calls)
    expected = np.vstack([alone(adapter, t) for t in TEXTS])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    # Tokenised in slices of 3, longest first; no batch over the budget.
    assert adapter.tokenized == [3, 3, 2]
    assert all(rows * width <= 40 for rows, width in calls)
    assert calls[0][1] == 30 and stats.batches == len(calls)
    assert stats.real_tokens == sum(map(len, TEXTS)) <= stats.padded_tokens


def test_an_oom_halves_the_batch_and_the_budget_it_keeps():
    torch.manual_seed(0)
    adapter = CharAdapter(CharMean(), tokenize_slice=None)
    expected, _ = embed(adapter, TEXTS, toks_per_batch=1000)
    adapter.model.calls.clear()
    adapter.model.fail_above = 60
    budget = TokenBudget()
    out, stats = embed(adapter, TEXTS, toks_per_batch=1000, budget=budget)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert stats.oom_splits >= 1 and budget.current < 1000
    failed = [c for c in adapter.model.calls if c[0] * c[1] > 60]
    assert failed and failed[0] == (len(TEXTS), 30)


def test_a_text_too_large_alone_is_named_and_the_rest_kept():
    torch.manual_seed(0)
    adapter = CharAdapter(CharMean())
    adapter.model.fail_above = 26
    with pytest.raises(SequenceTooLarge, match="chars: out of memory on a single") as err:
        embed(adapter, TEXTS, toks_per_batch=1000)
    assert err.value.indices == [1]
    done = err.value.done
    assert done is not None and not done[1] and done[[0, 2, 3, 4, 5, 6, 7]].all()
    np.testing.assert_allclose(err.value.values[0], alone(adapter, TEXTS[0]), atol=1e-6)


def test_no_texts_no_work():
    adapter = CharAdapter(CharMean())
    out, stats = embed(adapter, [], toks_per_batch=10)
    assert out.shape == (0, 4) and stats.batches == 0 and adapter.tokenized == []


def test_every_counter_reaches_the_manifest():
    """A partition's ``ModelStats`` sums the runner's counters by name: none is dropped."""
    from virnuc_dask.partition_result import ModelStats
    from virnuc_dask.worker.batch_runner import StageStats

    counters = StageStats(sequences=3, batches=2, real_tokens=10, padded_tokens=12, seconds=0.5)
    total = ModelStats.total([counters.as_dict(), counters.as_dict()], rows=6, unique=6)
    assert {f.name for f in dataclasses.fields(StageStats)} <= {
        f.name for f in dataclasses.fields(ModelStats)
    }
    assert (total.sequences, total.batches, total.padded_tokens) == (6, 4, 24)
    assert total.seconds == 1.0 and total.rows == 6
