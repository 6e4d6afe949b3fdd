"""ESM-2 through SDPA agrees with fair-esm's own forward (fp32, 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CASES, LENGTHS, read_embeddings_tsv, read_fasta_pairs

from virnuc_dask.models.demo import build_esm
from virnuc_dask.models.esm2 import EsmAdapter, load_esm
from virnuc_dask.models.esm_fast import SdpaEsm2, rotary_inv_freq
from virnuc_dask.worker.batch_runner import embed

TOL = 1e-5
AMINO = list("ACDEFGHIKLMNPQRSTVWYXBZUO")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(reference):
    return load_esm(str(reference / "models" / "esm2_t2_64_tiny.pt"))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Another layout: 3 layers, 80-d, 5 heads of 16 (random weights, real format)."""
    path = build_esm(
        tmp_path_factory.mktemp("esm") / "esm2_t3_80_test.pt", layers=3, dim=80, heads=5
    )
    return load_esm(str(path))


def random_proteins(n: int, seed: int, lo: int = 1, hi: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(AMINO, size=int(rng.integers(lo, hi + 1)))) for _ in range(n)]


def batch_tokens(alphabet, proteins: list[str], *, masked: int = 0, seed: int = 0):
    """A padded batch as fair-esm's batch converter makes it, with ``masked`` <mask> tokens
    per sequence (token_dropout's rescaling depends on them)."""
    _, _, tokens = alphabet.get_batch_converter()([(str(i), p) for i, p in enumerate(proteins)])
    rng = np.random.default_rng(seed)
    for row, p in enumerate(proteins):
        for pos in rng.integers(1, len(p) + 1, size=min(masked, len(p))):
            tokens[row, pos] = alphabet.mask_idx
    return tokens


def compare_all_layers(model, alphabet, tokens: torch.Tensor) -> float:
    fast = SdpaEsm2(model)
    layers = list(range(model.num_layers + 1))
    with torch.inference_mode():
        ref = model(tokens, repr_layers=layers)["representations"]
        got = fast(tokens, repr_layers=layers)["representations"]
    real = tokens.ne(alphabet.padding_idx)
    worst = 0.0
    for layer in layers:
        diff = (ref[layer] - got[layer]).abs()[real]  # padded rows are never read
        worst = max(worst, float(diff.max()))
    return worst


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_reference_proteins_every_layer(reference, tiny, case, length):
    model, alphabet = tiny
    proteins = [
        p
        for _, p in read_fasta_pairs(
            reference / "dev" / case / f"L{length}" / "input_identified_protein.faa"
        )
    ]
    order = np.argsort([len(p) for p in proteins])
    for batch in np.array_split(order, max(1, len(order) // 24)):  # padded, mixed lengths
        assert (
            compare_all_layers(
                model, alphabet, batch_tokens(alphabet, [proteins[i] for i in batch])
            )
            <= TOL
        )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_reference_embeddings_through_sdpa(reference, tiny, case, length):
    model, alphabet = tiny
    ref = reference / "dev" / case / f"L{length}"
    proteins = [p for _, p in read_fasta_pairs(ref / "input_identified_protein.faa")]
    _, expected = read_embeddings_tsv(ref / "esm_embeddings.tsv")
    got, stats = embed(EsmAdapter(SdpaEsm2(model), alphabet), proteins, toks_per_batch=4096)
    assert np.abs(got - expected).max() <= TOL
    assert stats.batches >= 1 and stats.real_tokens <= stats.padded_tokens


@pytest.mark.parametrize("masked", [0, 3])
def test_random_padded_batches_and_masks(tiny, wide, masked):
    for seed, (model, alphabet) in enumerate((tiny, wide)):
        proteins = random_proteins(12, seed, hi=300) + ["M", "MK"]
        tokens = batch_tokens(alphabet, proteins, masked=masked, seed=seed)
        assert compare_all_layers(model, alphabet, tokens) <= TOL
        # an unpadded batch takes the no-mask path
        same = batch_tokens(alphabet, ["MKVL" * 30] * 3, masked=masked, seed=seed)
        assert compare_all_layers(model, alphabet, same) <= TOL


def test_long_protein_beyond_cached_rotary_table(tiny):
    model, alphabet = tiny
    proteins = random_proteins(2, 7, lo=1500, hi=1600)
    assert compare_all_layers(model, alphabet, batch_tokens(alphabet, proteins)) <= TOL


def test_pooled_embeddings_equal_reference_forward(wide):
    model, alphabet = wide
    proteins = random_proteins(40, 11)
    ref, _ = embed(EsmAdapter(model, alphabet), proteins, toks_per_batch=3000)
    got, _ = embed(EsmAdapter(SdpaEsm2(model), alphabet), proteins, toks_per_batch=3000)
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


def test_shares_parameters_and_checks_the_model(tiny):
    model, _ = tiny
    fast = SdpaEsm2(model)
    assert {id(p) for p in fast.parameters()} == {id(p) for p in model.parameters()}
    assert torch.equal(model.layers[0].self_attn.rot_emb.inv_freq, rotary_inv_freq(16))
    assert (fast.embed_dim, fast.num_layers) == (model.embed_dim, model.num_layers)
    with pytest.raises(TypeError, match="not a fair-esm ESM2"):
        SdpaEsm2(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="out of range"):
        fast(torch.zeros((1, 3), dtype=torch.long), repr_layers=[9])
