"""Tests of the native DNABERT-S encoder against the original's reference embeddings."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REFERENCE

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.dnabert import DnabertTokenizer, load_dnabert, resolve_dnabert_dir
from virnuc_dask.models.dnabert_encoder import (
    DnabertConfig,
    DnabertS,
    alibi_slopes,
    build_alibi,
    mean_pool_all_tokens,
)

REF = REFERENCE
TINY = REF / "models" / "dnabert_s_tiny"
CASES = ["basic", "boundaries", "messy", "mixed"]
LENGTHS = ["L300", "L500"]
TOL = 1e-5


def read_fasta(path: Path) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    seqs: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            ids.append(line[1:].split()[0])
            seqs.append("")
        elif line.strip():
            seqs[-1] += line.strip()
    return ids, seqs


def read_embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    return [r[0] for r in rows], np.array([[float(x) for x in r[1:]] for r in rows], np.float32)


def pad_batch(token_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in token_ids)
    ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.bool)
    for row, toks in enumerate(token_ids):
        ids[row, : len(toks)] = torch.tensor(toks)
        mask[row, : len(toks)] = True
    return ids, mask


def embed(model: DnabertS, tok: DnabertTokenizer, seqs: list[str], batch: int = 32) -> np.ndarray:
    """Mean-pooled embeddings in padded, length-sorted batches, returned in input order."""
    token_ids = tok.encode(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(token_ids[i]))
    out = np.zeros((len(seqs), model.hidden_size), np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            ids, mask = pad_batch([token_ids[i] for i in idx], tok.pad_id)
            out[idx] = mean_pool_all_tokens(model(ids, mask), mask).numpy()
    return out


def embed_one_by_one(model: DnabertS, tok: DnabertTokenizer, seqs: list[str]) -> np.ndarray:
    with torch.inference_mode():
        return np.stack(
            [model(torch.tensor([ids]))[0].mean(dim=0).numpy() for ids in tok.encode(seqs)]
        )


@pytest.fixture(scope="module")
def tiny() -> tuple[DnabertS, DnabertTokenizer]:
    torch.set_num_threads(2)
    return load_dnabert(str(TINY))


def random_dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_embeddings(tiny, case: str, length: str) -> None:
    model, tok = tiny
    folder = REF / "dev" / case / length
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    ids, seqs = read_fasta(folder / "input_identified_nucleotide.fa")
    ref_ids, expected = read_embeddings(folder / "dnabert_s_embeddings.tsv")
    assert ids == ref_ids
    got = embed(model, tok, seqs)
    diff = np.abs(got - expected).max(axis=1)
    assert diff.max() <= TOL, f"worst row {ref_ids[int(diff.argmax())]}: {diff.max():.3g}"


def test_batch_independence(tiny) -> None:
    model, tok = tiny
    _, seqs = read_fasta(REF / "dev" / "messy" / "L500" / "input_identified_nucleotide.fa")
    seqs = seqs[:24] + ["A", "ACGTN", random_dna(37, 1), random_dna(700, 2)]
    random.Random(3).shuffle(seqs)
    alone = embed_one_by_one(model, tok, seqs)
    # one unsorted batch: maximal padding for the short ones
    batched = embed(model, tok, seqs, batch=len(seqs))
    np.testing.assert_allclose(batched, alone, rtol=0, atol=TOL)


def test_padding_rows_stay_finite() -> None:
    model, tok = load_dnabert(str(TINY))  # own copy: casting to bf16 and back loses bits
    ids, mask = pad_batch(tok.encode(["ACGTACGTAAC", random_dna(300, 4)]), tok.pad_id)
    ids = torch.cat([ids, torch.full_like(ids[:1], tok.pad_id)])
    mask = torch.cat([mask, torch.zeros_like(mask[:1])])  # an all-padding row too
    captured: list[torch.Tensor] = []
    hook = model.encoder.layer[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            with torch.inference_mode():
                out = model(ids, mask)
            assert torch.isfinite(captured[-1]).all(), dtype
            assert torch.isfinite(out).all() and (out[~mask] == 0).all()
    finally:
        hook.remove()


def test_tokenizer_unknown_letters_and_specials() -> None:
    tok = DnabertTokenizer.from_file(TINY / "tokenizer.json")
    seq = "ACGTACGGTTNNACGTRYKMSWBDHVACGT"
    (ids,) = tok.encode([seq])
    assert ids[0] == 1 and ids[-1] == 2
    assert ids.count(0) == sum(c not in "ACGT" for c in seq)
    assert tok.pad_id == 3 and 3 not in ids and len(ids) < 40
    long_ids = tok.encode([random_dna(12000, 5)])[0]  # no truncation at 2000 either
    assert long_ids[-1] == 2 and len(long_ids) > 2000


def test_alibi_slopes_and_extension() -> None:
    assert alibi_slopes(4) == [2**-2, 2**-4, 2**-6, 2**-8]
    twelve = [2.0**-i for i in range(1, 9)] + [2 ** -(i + 0.5) for i in range(4)]
    assert alibi_slopes(12) == pytest.approx(twelve, rel=1e-12)
    small, large = build_alibi(512, 12), build_alibi(700, 12)
    assert torch.equal(large[:, :512, :512], small)
    i, j = 650, 3
    assert large[5, i, j].item() == pytest.approx(-twelve[5] * abs(i - j))


def naive_forward(state: dict[str, torch.Tensor], cfg: DnabertConfig, ids: list[int]):
    """The original's math for one unpadded sequence, written out with plain matmul/softmax
    and an ALiBi bias built at exactly the input length (as the original rebuilds it)."""
    h, nh, eps = cfg.hidden_size, cfg.num_attention_heads, cfg.layer_norm_eps
    t = len(ids)
    x = state["embeddings.word_embeddings.weight"][ids]
    x = x + state["embeddings.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, (h,), state["embeddings.LayerNorm.weight"],
                     state["embeddings.LayerNorm.bias"], eps)  # fmt: skip
    pos = torch.arange(t)
    slopes = torch.tensor(alibi_slopes(nh), dtype=torch.float32)
    alibi = slopes[:, None, None] * -(pos[None, :] - pos[:, None]).abs()
    for n in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{n}."
        qkv = x @ state[p + "attention.self.Wqkv.weight"].T + state[p + "attention.self.Wqkv.bias"]
        q, k, v = qkv.view(t, 3, nh, h // nh).permute(1, 2, 0, 3)
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // nh) + alibi
        att = (scores.softmax(-1) @ v).transpose(0, 1).reshape(t, h)
        att = att @ state[p + "attention.output.dense.weight"].T
        x = F.layer_norm(att + state[p + "attention.output.dense.bias"] + x, (h,),
                         state[p + "attention.output.LayerNorm.weight"],
                         state[p + "attention.output.LayerNorm.bias"], eps)  # fmt: skip
        g = x @ state[p + "mlp.gated_layers.weight"].T
        inner = F.gelu(g[:, : cfg.intermediate_size]) * g[:, cfg.intermediate_size :]
        y = inner @ state[p + "mlp.wo.weight"].T + state[p + "mlp.wo.bias"]
        x = F.layer_norm(y + x, (h,), state[p + "mlp.layernorm.weight"],
                         state[p + "mlp.layernorm.bias"], eps)  # fmt: skip
    return x


def test_long_sequence_beyond_alibi_starting_size(tiny) -> None:
    model, tok = tiny
    state = torch.load(TINY / "pytorch_model.bin", map_location="cpu", weights_only=True)
    seq = random_dna(4000, 6)
    (ids,) = tok.encode([seq])
    assert len(ids) > model.config.alibi_starting_size
    with torch.inference_mode():
        out = model(torch.tensor([ids]))[0]
        expected = naive_forward(state, model.config, ids)
        torch.testing.assert_close(out, expected, rtol=0, atol=TOL)
        # and in a padded batch beside a short sequence
        batch_ids, mask = pad_batch(tok.encode(["ACGTTGCA", seq]), tok.pad_id)
        pooled = mean_pool_all_tokens(model(batch_ids, mask), mask)
    torch.testing.assert_close(pooled[1], expected.mean(0), rtol=0, atol=TOL)


def _copy_tiny(dst: Path, *names: str) -> Path:
    dst.mkdir()
    for name in names:
        shutil.copy(TINY / name, dst / name)
    return dst


def test_bert_prefix_safetensors_loads_same(tiny, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model, tok = tiny
    state = torch.load(TINY / "pytorch_model.bin", map_location="cpu", weights_only=True)
    prefixed = {f"bert.{k}": v.contiguous() for k, v in state.items()}
    prefixed["cls.predictions.bias"] = torch.zeros(model.config.vocab_size)
    folder = _copy_tiny(tmp_path / "m", "config.json", "tokenizer.json")
    save_file(prefixed, str(folder / "model.safetensors"))
    other, _ = load_dnabert(str(folder))
    seqs = ["ACGTAGCTAGCTAGGATCGATCGA", random_dna(450, 7)]
    np.testing.assert_array_equal(embed(other, tok, seqs), embed(model, tok, seqs))


def test_missing_tokenizer_is_named(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path / "m", "config.json", "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_dnabert(str(folder))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        resolve_dnabert_dir(str(folder))


def test_corrupt_weights_raise_model_load_error(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path / "m", "config.json", "tokenizer.json")
    (folder / "pytorch_model.bin").write_bytes(random.Random(8).randbytes(4096))
    with pytest.raises(ModelLoadError, match="pytorch_model.bin"):
        load_dnabert(str(folder))


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path / "m", "config.json", "tokenizer.json")
    state = torch.load(TINY / "pytorch_model.bin", map_location="cpu", weights_only=True)
    del state["encoder.layer.1.mlp.wo.bias"]
    state["encoder.layer.9.extra"] = torch.zeros(1)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"encoder\.layer\.1\.mlp\.wo\.bias") as err:
        load_dnabert(str(folder))
    assert "encoder.layer.9.extra" in str(err.value)


def test_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        resolve_dnabert_dir(str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(ModelLoadError, match="offline"):
        resolve_dnabert_dir("no-such-org/no-such-model", cache_dir=str(tmp_path), offline=True)


def test_config_from_json() -> None:
    cfg = DnabertConfig.from_json(TINY / "config.json")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.alibi_starting_size) == (128, 4096, 512)
    assert cfg.layer_norm_eps == 1e-12 and cfg.head_dim == 16
