import numpy as np
import pytest

from virnuc_dask.core.batching import budget_from_memory, padding_efficiency, token_budget_batches


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


def test_large_budgets_close_batches_at_the_padding_limit():
    rng = np.random.default_rng(2)
    lengths = rng.integers(20, 400, size=3000)
    budget = 65536
    batches = token_budget_batches(lengths, budget)
    for b in batches:
        longest = lengths[b].max()
        assert longest * len(b) <= budget
        # a batch reaches below 95 % of its longest only to fill a quarter of the budget
        short = lengths[b] < 0.95 * longest
        if short.any():
            assert np.argmax(short) * longest < 0.25 * budget + longest
    greedy = token_budget_batches(lengths, budget, max_padding=None)
    assert padding_efficiency(lengths, batches) > padding_efficiency(lengths, greedy)
    assert sorted(np.concatenate(batches).tolist()) == list(range(3000))


@pytest.mark.parametrize("n", [2000, 20000])
def test_pipeline_partitions_of_perf_inputs_pad_little(tmp_path, n):
    from helpers import write_perf_reads

    from virnuc_dask.core.formats import plan_blocks, read_block
    from virnuc_dask.core.orfs import orfs_from_records

    reads = write_perf_reads(tmp_path / "reads.fa", n, seed=n)
    records = [r for b in plan_blocks([str(reads)]) for r in read_block(b)]
    for length in (300, 500):
        lengths = np.array([len(o.protein) + 2 for o in orfs_from_records(records, length).orfs])
        for budget in (2048, 32768):  # CPU default, GPU ceiling
            parts = [lengths[i : i + 2048] for i in range(0, len(lengths), 2048)]
            real = sum(int(p.sum()) for p in parts)
            padded = sum(
                int(p[b].max()) * len(b) for p in parts for b in token_budget_batches(p, budget)
            )
            assert real / padded >= 0.97, (length, budget)


def test_budget_from_memory():
    assert budget_from_memory(80 * 2**30, 100_000) == 32768  # ceiling
    assert budget_from_memory(2**20, 100_000) == 1024  # floor
    assert budget_from_memory(2 * 2**30, 100_000, fraction=0.5) == 10737
    with pytest.raises(ValueError, match="bytes_per_token"):
        budget_from_memory(2**30, 0)
    with pytest.raises(ValueError, match="max_padding"):
        token_budget_batches([3], 10, max_padding=1.5)
