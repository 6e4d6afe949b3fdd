"""Embedding loops: prefetch, device token budget, OOM halving, failures named by position."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import TINY

from virnuc_dask.core.batching import token_budget_batches
from virnuc_dask.models.dnabert import load_dnabert
from virnuc_dask.models.esm2 import load_esm
from virnuc_dask.models.esm_fast import SdpaEsm2
from virnuc_dask.worker.adapters import (
    CPU_TOKS_PER_BATCH,
    dnabert_bytes_per_token,
    embed_dnabert,
    embed_esm,
    esm_bytes_per_token,
)
from virnuc_dask.worker.batch_runner import (
    NonFiniteEmbedding,
    SequenceTooLarge,
    device_token_budget,
)

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def esm():
    model, alphabet = load_esm(TINY["esm_model"])
    return SdpaEsm2(model), alphabet


@pytest.fixture(scope="module")
def dnabert():
    return load_dnabert(TINY["dnabert_model"])


def dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def proteins(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(1, 200)))
        for _ in range(n)
    ]


def test_prefetch_gives_the_same_rows(esm, dnabert):
    model, alphabet = esm
    prots = proteins(60, 1)
    a, sa = embed_esm(model, alphabet, prots, toks_per_batch=800, prefetch=True)
    b, sb = embed_esm(model, alphabet, prots, toks_per_batch=800, prefetch=False)
    np.testing.assert_array_equal(a, b)
    assert sa.batches == sb.batches > 5 and sa.prepare_seconds > 0

    dn_model, tokenizer = dnabert
    seqs = [dna(n, n) for n in range(3, 1400, 23)]  # several tokenising slices' worth
    a, sa = embed_dnabert(dn_model, tokenizer, seqs, toks_per_batch=900, prefetch=True)
    b, sb = embed_dnabert(dn_model, tokenizer, seqs, toks_per_batch=900, prefetch=False)
    np.testing.assert_array_equal(a, b)
    alone = np.vstack(
        [embed_dnabert(dn_model, tokenizer, [s], toks_per_batch=10_000)[0] for s in seqs[::9]]
    )
    np.testing.assert_allclose(a[::9], alone, rtol=0, atol=1e-5)
    assert sa.real_tokens == sb.real_tokens and sa.real_tokens <= sa.padded_tokens


def test_cpu_budget_when_none_is_given(esm):
    model, alphabet = esm
    prots = proteins(80, 2)
    _, stats = embed_esm(model, alphabet, prots)
    lengths = [len(p) + 2 for p in prots]
    assert stats.batches == len(token_budget_batches(lengths, CPU_TOKS_PER_BATCH["esm"]))
    assert device_token_budget("cpu", bytes_per_token=1, cpu_default=123) == 123


def test_activation_estimates_grow_with_width_and_length(esm, dnabert):
    model, _ = esm
    dn_model, _ = dnabert
    assert (
        esm_bytes_per_token(model, 200) > esm_bytes_per_token(model, 100) > 4 * 16 * model.embed_dim
    )
    assert dnabert_bytes_per_token(dn_model, 100) >= 4 * 24 * dn_model.hidden_size


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
def test_dnabert_oom_halves_batches(dnabert, monkeypatch, prefetch):
    model, tokenizer = dnabert
    seqs = [dna(120, s) for s in range(9)]
    expected, _ = embed_dnabert(model, tokenizer, seqs, toks_per_batch=100_000)
    calls = failing_forward(model, monkeypatch, when=lambda ids: ids.shape[0] > 2)
    got, stats = embed_dnabert(model, tokenizer, seqs, toks_per_batch=100_000, prefetch=prefetch)
    # 9 fails, the budget halves (5 of them are cut to 4 + 1); 4 fails, the budget halves
    # again; from then on every batch is cut to fit: no third OOM.
    assert calls[0] == 9 and [c for c in calls if c > 2] == [9, 4] and stats.oom_splits == 2
    assert stats.batches == len([c for c in calls if c <= 2])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_dnabert_single_sequence_oom_names_its_position(dnabert, monkeypatch):
    model, tokenizer = dnabert
    seqs = [dna(60, 1), dna(900, 2), dna(60, 3)]
    failing_forward(
        model, monkeypatch, when=lambda ids: ids.shape[1] > 100, exc=torch.OutOfMemoryError(OOM)
    )
    with pytest.raises(SequenceTooLarge, match="DNABERT-S: out of memory on a single") as err:
        embed_dnabert(model, tokenizer, seqs, toks_per_batch=100_000)
    assert err.value.index == 1 and err.value.model == "DNABERT-S"


def test_esm_single_sequence_oom_names_its_position(esm, monkeypatch):
    model, alphabet = esm
    prots = ["MKV" * 5, "M" * 300, "MKV" * 7, "W" * 20]
    failing_forward(model, monkeypatch, when=lambda ids: ids.shape[1] > 100)
    with pytest.raises(SequenceTooLarge) as err:
        embed_esm(model, alphabet, prots, toks_per_batch=100_000)
    assert err.value.index == 1 and err.value.model == "ESM-2"


def test_other_errors_are_not_taken_for_oom(esm, monkeypatch):
    model, alphabet = esm
    calls = failing_forward(
        model, monkeypatch, when=lambda ids: True, exc=RuntimeError("expected scalar type Float")
    )
    with pytest.raises(RuntimeError, match="expected scalar type"):
        embed_esm(model, alphabet, proteins(6, 3), toks_per_batch=100_000)
    assert len(calls) == 1


def test_tokenizer_failure_reaches_the_caller(dnabert):
    model, tokenizer = dnabert

    class Broken:
        pad_id = tokenizer.pad_id

        def encode(self, seqs):
            raise ValueError("cannot tokenise")

    with pytest.raises(ValueError, match="cannot tokenise"):
        embed_dnabert(model, Broken(), ["ACGT"] * 3, toks_per_batch=100)


def test_non_finite_embeddings_are_refused(esm, monkeypatch):
    model, alphabet = esm
    real = model.forward

    def overflowing(ids, *args, **kwargs):
        out = real(ids, *args, **kwargs)
        for rep in out["representations"].values():
            rep[0, 1] = float("inf")  # first sequence of every batch
        return out

    monkeypatch.setattr(model, "forward", overflowing)
    with pytest.raises(NonFiniteEmbedding, match="non-finite embedding") as err:
        embed_esm(model, alphabet, ["MKVL", "MK"], toks_per_batch=100_000)
    assert err.value.indices == [0]
    # the finished row is kept
    assert err.value.done.tolist() == [False, True] and np.isfinite(err.value.values[1]).all()


def test_empty_input(esm, dnabert):
    model, alphabet = esm
    out, stats = embed_esm(model, alphabet, [], toks_per_batch=None)
    assert out.shape == (0, model.embed_dim) and stats.batches == 0
    dn_model, tokenizer = dnabert
    out, _ = embed_dnabert(dn_model, tokenizer, [])
    assert out.shape == (0, dn_model.hidden_size)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu(esm, dnabert):
    model, alphabet = esm
    prots = proteins(50, 5)
    cpu, _ = embed_esm(model, alphabet, prots, toks_per_batch=1500)
    model.to("cuda")
    try:
        gpu, stats = embed_esm(model, alphabet, prots, device="cuda")  # budget from memory
    finally:
        model.to("cpu")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4)
    assert stats.batches >= 1
    dn_model, tokenizer = dnabert
    seqs = [dna(n, n) for n in range(5, 900, 37)]
    cpu, _ = embed_dnabert(dn_model, tokenizer, seqs, toks_per_batch=1500)
    dn_model.to("cuda")
    try:
        gpu, _ = embed_dnabert(dn_model, tokenizer, seqs, device="cuda")
    finally:
        dn_model.to("cpu")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4)


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


def test_after_an_oom_later_batches_and_calls_are_cut_to_fit(esm, monkeypatch):
    from virnuc_dask.core.batching import TokenBudget

    model, alphabet = esm
    prots = [
        "".join(random.Random(s).choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(60))
        for s in range(40)
    ]
    expected, _ = embed_esm(model, alphabet, prots, toks_per_batch=4000)
    limit = [1000]
    forwards = memory_limit(model, monkeypatch, tokens=limit)

    budget = TokenBudget(recover_after=100)
    first, stats = embed_esm(model, alphabet, prots, toks_per_batch=4000, budget=budget)
    ooms_first = sum(1 for _, ran in forwards if not ran)
    assert 1 <= ooms_first <= 2 and budget.current <= 1000
    # Every batch after the first OOMs ran at once: 40 x 62 tokens in batches <= 1000.
    assert stats.batches == len([f for f in forwards if f[1]]) <= 40 * 62 // 496 + 2
    np.testing.assert_allclose(first, expected, rtol=0, atol=1e-5)

    forwards.clear()  # the next partition on the same worker: no OOM at all
    second, _ = embed_esm(model, alphabet, prots, toks_per_batch=4000, budget=budget)
    assert all(ran for _, ran in forwards) and len(forwards) >= 3
    np.testing.assert_allclose(second, expected, rtol=0, atol=1e-5)

    forwards.clear()  # a fresh budget, as before this was learned, fails first again
    embed_esm(model, alphabet, prots, toks_per_batch=4000)
    assert not forwards[0][1]

    limit[0] = None  # the memory is free again: the budget grows back to the ceiling
    budget.recover_after, budget.growth = 2, 2.0
    forwards.clear()
    embed_esm(model, alphabet, prots, toks_per_batch=4000, budget=budget)
    embed_esm(model, alphabet, prots, toks_per_batch=4000, budget=budget)
    assert budget.current == 4000 and max(t for t, _ in forwards) > 1000


def test_a_sequence_too_large_keeps_the_finished_batches(esm, monkeypatch):
    """The record that does not fit alone fails; every other one is embedded once."""
    from virnuc_dask.dataflow.partition_task import FailureGuard, isolate_failures

    model, alphabet = esm
    prots = proteins(30, 5)
    prots[7] = "M" * 400
    expected, _ = embed_esm(model, alphabet, prots, toks_per_batch=100_000)
    forwards = memory_limit(model, monkeypatch, tokens=[300])

    def embed(idx):
        return embed_esm(model, alphabet, [prots[i] for i in idx], toks_per_batch=2000)

    pieces, _, failures = isolate_failures(
        embed, np.arange(30), stage="esm", ids=[f"p{i}" for i in range(30)], guard=FailureGuard()
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
    model, alphabet = load_esm(TINY["esm_model"], dtype=torch.float16)
    fast = SdpaEsm2(model)
    reference, _ = embed_esm(
        SdpaEsm2(load_esm(TINY["esm_model"])[0]), alphabet, proteins(6, 9), toks_per_batch=100_000
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def overflow(module, args, output):
        if output.dtype == torch.float16 and output.shape[0] > 1:
            output[0] = float("inf")  # the first sequence of each batch of several
        return output

    model.emb_layer_norm_after.register_forward_hook(overflow)
    got, stats = embed_esm(fast, alphabet, proteins(6, 9), toks_per_batch=100_000)
    assert np.isfinite(got).all() and stats.recomputed_fp32 == 1
    cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() > 0.999
    after = model.state_dict()
    assert all(after[k].dtype == torch.float16 and torch.equal(after[k], before[k]) for k in before)


def test_fp16_overflow_in_the_pipeline_is_not_a_failed_record(monkeypatch):
    from virnuc_dask.dataflow.partition_task import FailureGuard, isolate_failures

    model, tokenizer = load_dnabert(TINY["dnabert_model"], dtype=torch.float16)
    seqs = [dna(90 + 7 * s, s) for s in range(5)]

    def overflow(module, args, output):
        if output.dtype == torch.float16:
            output[:, 0] = float("inf")
        return output

    model.encoder.layer[-1].register_forward_hook(overflow)
    pieces, _, failures = isolate_failures(
        lambda idx: embed_dnabert(model, tokenizer, [seqs[i] for i in idx], toks_per_batch=100_000),
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


def test_nan_at_a_padded_position_does_not_reach_real_rows(esm, dnabert):
    model, alphabet = esm
    prots = ["MKVLAAGIVG" * 4, "MKVL"]  # one batch: the second is padded by 36
    alone = np.vstack([embed_esm(model, alphabet, [p], toks_per_batch=10_000)[0] for p in prots])
    hook = model.esm.layers[0].fc2.register_forward_hook(nan_at_padding)
    try:
        got, stats = embed_esm(model, alphabet, prots, toks_per_batch=10_000)
    finally:
        hook.remove()
    assert stats.batches == 1 and np.isfinite(got).all()
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)

    dn_model, tokenizer = dnabert
    seqs = [dna(200, 1), dna(40, 2)]
    alone = np.vstack(
        [embed_dnabert(dn_model, tokenizer, [s], toks_per_batch=10_000)[0] for s in seqs]
    )
    hook = dn_model.encoder.layer[0].register_forward_hook(nan_at_padding)
    try:
        got, stats = embed_dnabert(dn_model, tokenizer, seqs, toks_per_batch=10_000)
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
