import numpy as np

from virnuc_dask.batching import padding_efficiency, token_budget_batches


def test_every_index_once_and_budget_respected():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=1000)
    batches = token_budget_batches(lengths, 2048)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    for b in batches:
        assert lengths[b].max() * len(b) <= 2048


def test_longest_first_and_oversized_alone():
    batches = token_budget_batches([5, 5000, 7], 100)
    assert batches[0].tolist() == [1]
    assert [b.tolist() for b in batches[1:]] == [[2, 0]]


def test_padding_efficiency_on_sorted_lengths():
    rng = np.random.default_rng(1)
    lengths = rng.integers(100, 200, size=2048)
    eff = padding_efficiency(lengths, token_budget_batches(lengths, 2048))
    assert 0.97 < eff <= 1.0
    assert padding_efficiency([4, 2], [np.array([0, 1])]) == 6 / 8
