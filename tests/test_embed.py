"""Embedding loops: prefetch, device token budget, OOM halving, failures named by position;
each behaviour of the batch runner checked on every embedding model's adapter."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import TINY

from virnuc_dask.core.batching import token_budget_batches
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS, embedding_model
from virnuc_dask.worker.batch_runner import (
    NonFiniteEmbedding,
    SequenceTooLarge,
    device_token_budget,
    embed,
)

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapters():
    return {m.key: m.load_adapter(TINY[m.source_setting]) for m in EMBEDDING_MODELS}


@pytest.fixture(params=MODEL_KEYS)
def adapter(request, adapters):
    return adapters[request.param]


def dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def protein(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n))


def proteins(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [protein(rng.randint(1, 200), rng.random()) for _ in range(n)]


def text(adapter, n: int, seed: int) -> str:
    """A random input of what ``adapter``'s model embeds, for an ``n``-base nucleotide
    slice: the slice, or a protein a third as long."""
    embeds = embedding_model(key_of(adapter)).embeds
    return dna(n, seed) if embeds == "nucleotide" else protein(max(1, n // 3), seed)


def key_of(adapter) -> str:
    return next(m.key for m in EMBEDDING_MODELS if m.name == adapter.name)


def test_prefetch_gives_the_same_rows(adapter):
    texts = [text(adapter, n, n) for n in range(3, 1400, 23)]  # several tokenising slices
    a, sa = embed(adapter, texts, toks_per_batch=900, prefetch=True)
    b, sb = embed(adapter, texts, toks_per_batch=900, prefetch=False)
    np.testing.assert_array_equal(a, b)
    assert sa.batches == sb.batches > 5 and sa.prepare_seconds > 0
    alone = np.vstack([embed(adapter, [t], toks_per_batch=10_000)[0] for t in texts[::9]])
    np.testing.assert_allclose(a[::9], alone, rtol=0, atol=1e-5)
    assert sa.real_tokens == sb.real_tokens and sa.real_tokens <= sa.padded_tokens


def test_cpu_budget_when_none_is_given(adapter):
    texts = [text(adapter, 1 + 7 * i, i) for i in range(80)]
    _, stats = embed(adapter, texts)
    lengths = [len(t) for t in adapter.tokenize(texts)]
    assert stats.batches == len(token_budget_batches(lengths, adapter.cpu_tokens))
    assert device_token_budget("cpu", bytes_per_token=1, cpu_default=123) == 123


def test_activation_estimates_grow_with_width_and_length(adapter):
    assert adapter.bytes_per_token(200) > adapter.bytes_per_token(100) >= 4 * 16 * adapter.width


def failing_forward(model: torch.nn.Module, monkeypatch, *, when, exc=None):
    """Make ``model`` raise ``exc`` (an OOM RuntimeError) where ``when(input_ids)`` is true."""
    exc = exc or RuntimeError(OOM)
    calls: list[int] = []
    real = model.forward

    def forward(ids, *args, **kwargs):
        calls.append(ids.shape[0])
        if when(ids):
            raise exc
        return real(ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return calls


@pytest.mark.parametrize("prefetch", [True, False])
def test_oom_halves_batches(adapter, monkeypatch, prefetch):
    texts = [text(adapter, 120, s) for s in range(9)]
    expected, _ = embed(adapter, texts, toks_per_batch=100_000)
    calls = failing_forward(adapter.model, monkeypatch, when=lambda ids: ids.shape[0] > 2)
    got, stats = embed(adapter, texts, toks_per_batch=100_000, prefetch=prefetch)
    # 9 fails, the budget halves (5 of them are cut to 4 + 1); 4 fails, the budget halves
    # again; from then on every batch is cut to fit: no third OOM.
    assert calls[0] == 9 and [c for c in calls if c > 2] == [9, 4] and stats.oom_splits == 2
    assert stats.batches == len([c for c in calls if c <= 2])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_single_sequence_oom_names_its_position(adapter, monkeypatch):
    texts = [text(adapter, 15, 1), text(adapter, 900, 2), text(adapter, 21, 3)]
    failing_forward(
        adapter.model,
        monkeypatch,
        when=lambda ids: ids.shape[1] > 100,
        exc=torch.OutOfMemoryError(OOM),
    )
    with pytest.raises(SequenceTooLarge, match=f"{adapter.name}: out of memory on a single") as e:
        embed(adapter, texts, toks_per_batch=100_000)
    assert e.value.index == 1 and e.value.model == adapter.name


def test_other_errors_are_not_taken_for_oom(adapter, monkeypatch):
    calls = failing_forward(
        adapter.model,
        monkeypatch,
        when=lambda ids: True,
        exc=RuntimeError("expected scalar type Float"),
    )
    with pytest.raises(RuntimeError, match="expected scalar type"):
        embed(adapter, [text(adapter, 30, s) for s in range(6)], toks_per_batch=100_000)
    assert len(calls) == 1


def test_tokenizer_failure_reaches_the_caller(adapter, monkeypatch):
    def broken(texts):
        raise ValueError("cannot tokenise")

    monkeypatch.setattr(adapter, "tokenize", broken)
    with pytest.raises(ValueError, match="cannot tokenise"):
        embed(adapter, [text(adapter, 4, s) for s in range(3)], toks_per_batch=100)


def test_non_finite_embeddings_are_refused(adapter, monkeypatch):
    real = adapter.forward

    def overflowing(batch):
        out = real(batch)
        out[0] = float("inf")  # the first (longest) sequence of every batch
        return out

    monkeypatch.setattr(adapter, "forward", overflowing)
    with pytest.raises(NonFiniteEmbedding, match="non-finite embedding") as err:
        embed(adapter, [text(adapter, 40, 1), text(adapter, 8, 2)], toks_per_batch=100_000)
    assert err.value.indices == [0]
    # the finished row is kept
    assert err.value.done.tolist() == [False, True] and np.isfinite(err.value.values[1]).all()


def test_empty_input(adapter):
    out, stats = embed(adapter, [], toks_per_batch=None)
    assert out.shape == (0, adapter.width) and stats.batches == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu(adapter):
    texts = [text(adapter, n, n) for n in range(5, 900, 37)]
    cpu, _ = embed(adapter, texts, toks_per_batch=1500)
    adapter.model.to("cuda")
    try:
        gpu, stats = embed(adapter, texts, device="cuda")  # budget from memory
    finally:
        adapter.model.to("cpu")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4)
    assert stats.batches >= 1


# -- the token budget learned from OOM ---------------------------------------------------------


def memory_limit(model, monkeypatch, *, tokens: list[int | None]):
    """``model`` runs out of memory on a batch of more than ``tokens[0]`` padded tokens
    (None: never); returns the list of (padded tokens, ran) of every forward."""
    forwards: list[tuple[int, bool]] = []
    real = model.forward

    def forward(ids, *args, **kwargs):
        fits = tokens[0] is None or ids.numel() <= tokens[0]
        forwards.append((ids.numel(), fits))
        if not fits:
            raise torch.OutOfMemoryError(OOM)
        return real(ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return forwards


def test_after_an_oom_later_batches_and_calls_are_cut_to_fit(adapters, monkeypatch):
    from virnuc_dask.core.batching import TokenBudget

    esm = adapters["esm"]
    model = esm.model
    prots = [
        "".join(random.Random(s).choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(60))
        for s in range(40)
    ]
    expected, _ = embed(esm, prots, toks_per_batch=4000)
    limit = [1000]
    forwards = memory_limit(model, monkeypatch, tokens=limit)

    budget = TokenBudget(recover_after=100)
    first, stats = embed(esm, prots, toks_per_batch=4000, budget=budget)
    ooms_first = sum(1 for _, ran in forwards if not ran)
    assert 1 <= ooms_first <= 2 and budget.current <= 1000
    # Every batch after the first OOMs ran at once: 40 x 62 tokens in batches <= 1000.
    assert stats.batches == len([f for f in forwards if f[1]]) <= 40 * 62 // 496 + 2
    np.testing.assert_allclose(first, expected, rtol=0, atol=1e-5)

    forwards.clear()  # the next partition on the same worker: no OOM at all
    second, _ = embed(esm, prots, toks_per_batch=4000, budget=budget)
    assert all(ran for _, ran in forwards) and len(forwards) >= 3
    np.testing.assert_allclose(second, expected, rtol=0, atol=1e-5)

    forwards.clear()  # a fresh budget, as before this was learned, fails first again
    embed(esm, prots, toks_per_batch=4000)
    assert not forwards[0][1]

    limit[0] = None  # the memory is free again: the budget grows back to the ceiling
    budget.recover_after, budget.growth = 2, 2.0
    forwards.clear()
    # Batches are cut ahead of the forwards (prefetch), so how many a call runs at each
    # budget depends on timing; three calls double a 620-token budget past the ceiling
    # even when each batch is cut only after the previous one ran.
    grown = []
    for _ in range(3):
        embed(esm, prots, toks_per_batch=4000, budget=budget)
        grown.append(budget.current)
    assert grown == sorted(grown) and grown[-1] == 4000, grown
    assert max(t for t, _ in forwards) > 1000


def test_a_sequence_too_large_keeps_the_finished_batches(adapters, monkeypatch):
    """The record that does not fit alone fails; every other one is embedded once."""
    from virnuc_dask.dataflow.partition_task import FailureGuard, isolate_failures

    esm = adapters["esm"]
    model = esm.model
    prots = proteins(30, 5)
    prots[7] = "M" * 400
    expected, _ = embed(esm, prots, toks_per_batch=100_000)
    forwards = memory_limit(model, monkeypatch, tokens=[300])

    def embed_some(idx):
        return embed(esm, [prots[i] for i in idx], toks_per_batch=2000)

    pieces, _, failures = isolate_failures(
        embed_some,
        np.arange(30),
        stage="esm",
        ids=[f"p{i}" for i in range(30)],
        guard=FailureGuard(),
    )
    assert [(f.index, f.error.split(":")[0]) for f in failures] == [(7, "SequenceTooLarge")]
    rows = np.concatenate([idx for idx, _ in pieces])
    assert sorted(rows) == [i for i in range(30) if i != 7]
    # nothing computed twice: the batches that ran hold each other record exactly once
    ran = sum(t for t, ok in forwards if ok)
    assert ran <= sum(len(p) + 2 for i, p in enumerate(prots) if i != 7) * 1.25
    for idx, values in pieces:
        np.testing.assert_allclose(values, expected[idx], rtol=0, atol=1e-5)


# -- precision fallbacks and padding ----------------------------------------------------------


def test_fp16_overflow_is_computed_again_in_fp32_not_failed(monkeypatch):
    """An overflow (injected where the model computes in fp16) gives an fp32 result for
    that record; the fp16 weights are the same afterwards."""
    esm = embedding_model("esm")
    fast = esm.load_adapter(TINY["esm_model"], dtype=torch.float16)
    model = fast.model.esm
    reference, _ = embed(
        esm.load_adapter(TINY["esm_model"]), proteins(6, 9), toks_per_batch=100_000
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def overflow(module, args, output):
        if output.dtype == torch.float16 and output.shape[0] > 1:
            output[0] = float("inf")  # the first sequence of each batch of several
        return output

    model.emb_layer_norm_after.register_forward_hook(overflow)
    got, stats = embed(fast, proteins(6, 9), toks_per_batch=100_000)
    assert np.isfinite(got).all() and stats.recomputed_fp32 == 1
    cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() > 0.999
    after = model.state_dict()
    assert all(after[k].dtype == torch.float16 and torch.equal(after[k], before[k]) for k in before)


def test_fp16_overflow_in_the_pipeline_is_not_a_failed_record(monkeypatch):
    from virnuc_dask.dataflow.partition_task import FailureGuard, isolate_failures

    dnabert = embedding_model("dnabert").load_adapter(TINY["dnabert_model"], dtype=torch.float16)
    model = dnabert.model
    seqs = [dna(90 + 7 * s, s) for s in range(5)]

    def overflow(module, args, output):
        if output.dtype == torch.float16:
            output[:, 0] = float("inf")
        return output

    model.encoder.layer[-1].register_forward_hook(overflow)
    pieces, _, failures = isolate_failures(
        lambda idx: embed(dnabert, [seqs[i] for i in idx], toks_per_batch=100_000),
        np.arange(5),
        stage="dnabert",
        ids=[str(i) for i in range(5)],
        guard=FailureGuard(),
    )
    assert not failures and sorted(np.concatenate([i for i, _ in pieces])) == list(range(5))


def nan_at_padding(module, args, output):
    """A forward hook making the padded tail of the second row of a two-row batch NaN."""
    if output.shape[0] == 2:
        output[1, -5:] = float("nan")
    return output


# The first layer of each model, where a NaN at a padded position is injected.
FIRST_LAYER = {
    "esm": lambda model: model.esm.layers[0].fc2,
    "dnabert": lambda model: model.encoder.layer[0],
}


def test_nan_at_a_padded_position_does_not_reach_real_rows(adapter):
    texts = [text(adapter, 200, 1), text(adapter, 40, 2)]  # one batch: the second is padded
    alone = np.vstack([embed(adapter, [t], toks_per_batch=10_000)[0] for t in texts])
    layer = FIRST_LAYER[key_of(adapter)](adapter.model)
    hook = layer.register_forward_hook(nan_at_padding)
    try:
        got, stats = embed(adapter, texts, toks_per_batch=10_000)
    finally:
        hook.remove()
    assert stats.batches == 1 and np.isfinite(got).all()
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)


def test_mean_pooling_ignores_nan_at_padding():
    from virnuc_dask.models.dnabert_encoder import mean_pool_all_tokens

    hidden = torch.ones(2, 4, 3)
    hidden[1, 2:] = float("nan")
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    assert torch.equal(mean_pool_all_tokens(hidden, mask), torch.ones(2, 3))
