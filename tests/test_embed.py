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
from virnuc_dask.worker.embed import (
    CPU_TOKS_PER_BATCH,
    NonFiniteEmbedding,
    SequenceTooLarge,
    device_token_budget,
    dnabert_bytes_per_token,
    embed_dnabert,
    embed_esm,
    esm_bytes_per_token,
)

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    return ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(1, 200)))
            for _ in range(n)]


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
    alone = np.vstack([embed_dnabert(dn_model, tokenizer, [s], toks_per_batch=10_000)[0]
                       for s in seqs[::9]])
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
    assert esm_bytes_per_token(model, 200) > esm_bytes_per_token(model, 100) > \
        4 * 16 * model.embed_dim
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
    got, stats = embed_dnabert(model, tokenizer, seqs, toks_per_batch=100_000,
                               prefetch=prefetch)
    # 9 fails, the budget halves (5 of them are cut to 4 + 1); 4 fails, the budget halves
    # again; from then on every batch is cut to fit: no third OOM.
    assert calls[0] == 9 and [c for c in calls if c > 2] == [9, 4] and stats.oom_splits == 2
    assert stats.batches == len([c for c in calls if c <= 2])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_dnabert_single_sequence_oom_names_its_position(dnabert, monkeypatch):
    model, tokenizer = dnabert
    seqs = [dna(60, 1), dna(900, 2), dna(60, 3)]
    failing_forward(model, monkeypatch, when=lambda ids: ids.shape[1] > 100,
                    exc=torch.OutOfMemoryError(OOM))
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
    calls = failing_forward(model, monkeypatch, when=lambda ids: True,
                            exc=RuntimeError("expected scalar type Float"))
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
