import numpy as np
import pytest
import torch
from helpers import CASES, LENGTHS, read_embeddings_tsv, read_fasta_pairs

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.esm2 import EsmAdapter, load_esm, resolve_esm_path
from virnuc_dask.worker.batch_runner import embed


@pytest.fixture(scope="module")
def esm(reference):
    return load_esm(str(reference / "models" / "esm2_t2_64_tiny.pt"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_esm_embeddings_match_reference(reference, esm, case, length):
    model, alphabet = esm
    ref = reference / "dev" / case / f"L{length}"
    proteins = read_fasta_pairs(ref / "input_identified_protein.faa")
    ids, expected = read_embeddings_tsv(ref / "esm_embeddings.tsv")
    assert ids == [i for i, _ in proteins]
    got, stats = embed(EsmAdapter(model, alphabet), [p for _, p in proteins], toks_per_batch=1024)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    assert stats.sequences == len(proteins) and stats.real_tokens <= stats.padded_tokens


def test_batch_composition_does_not_change_results(esm):
    model, alphabet = esm
    rng = np.random.default_rng(1)
    aas = list("ACDEFGHIKLMNPQRSTVWY")
    proteins = ["".join(rng.choice(aas, size=n)) for n in (1, 5, 40, 41, 166, 3)]
    alone = np.vstack(
        [embed(EsmAdapter(model, alphabet), [p], toks_per_batch=10_000)[0] for p in proteins]
    )
    batched, _ = embed(EsmAdapter(model, alphabet), proteins, toks_per_batch=10_000)
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_oom_splits_batches_and_names_single_sequence(esm, monkeypatch):
    model, alphabet = esm
    calls = []
    real_forward = model.forward

    def flaky(tokens, **kw):
        calls.append(tokens.shape[0])
        if tokens.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(tokens, **kw)

    monkeypatch.setattr(model, "forward", flaky)
    proteins = ["MKV" * 5] * 8
    got, stats = embed(EsmAdapter(model, alphabet), proteins, toks_per_batch=10_000)
    assert stats.oom_splits >= 2 and max(calls[1:]) <= 4
    monkeypatch.setattr(model, "forward", real_forward)
    expected, _ = embed(EsmAdapter(model, alphabet), proteins, toks_per_batch=10_000)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_local_path_needs_regression_file(tmp_path, reference):
    src = reference / "models" / "esm2_t2_64_tiny.pt"
    lone = tmp_path / "esm2_t2_64_tiny.pt"
    lone.write_bytes(src.read_bytes())
    with pytest.raises(ModelLoadError, match="contact-regression"):
        resolve_esm_path(str(lone))


def test_offline_hub_name_without_cache_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="offline"):
        resolve_esm_path("esm2_t36_3B_UR50D", cache_dir=tmp_path, offline=True)


def test_hub_name_resolves_from_staged_cache(tmp_path, reference):
    staged = tmp_path / "checkpoints"
    staged.mkdir()
    for suffix in (".pt", "-contact-regression.pt"):
        (staged / f"esm2_t2_64_tiny{suffix}").write_bytes(
            (reference / "models" / f"esm2_t2_64_tiny{suffix}").read_bytes()
        )
    path = resolve_esm_path("esm2_t2_64_tiny", cache_dir=tmp_path, offline=True)
    model, _ = load_esm("esm2_t2_64_tiny", cache_dir=tmp_path, offline=True)
    assert path.parent == staged and model.embed_dim == 64


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "esm2_bad.pt"
    bad.write_bytes(b"not a checkpoint")
    (tmp_path / "esm2_bad-contact-regression.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="esm2_bad.pt"):
        load_esm(str(bad))
    assert torch.get_default_dtype() == torch.float32


def test_fast_tokens_equal_fair_esm_encode(esm):
    from virnuc_dask.models.esm2 import esm_tokens

    _, alphabet = esm
    proteins = ["MKVLAAGIRSTWY", "ACDEFGHIKLMNPQRSTVWY", "X", "BZUO", "M"]
    assert [t.tolist() for t in esm_tokens(alphabet, proteins)] == [
        alphabet.encode(p) for p in proteins
    ]
