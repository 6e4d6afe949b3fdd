"""The original VirNucPro way, for ``bench`` to compare against: DNABERT-S one sequence
per call, unpadded; ESM-2 through fair-esm's ``FastaBatchedDataset`` in 2048-token batches
and fair-esm's own forward; one process."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from virnuc_dask.bench.kit import read_orfs_of, sync_device, timed
from virnuc_dask.models import MODEL_KEYS

ORIGINAL_TOKS_PER_BATCH = 2048


@torch.inference_mode()
def original_dnabert(
    model: torch.nn.Module, tokenizer: Any, sequences: Sequence[str], *, device: torch.device
) -> np.ndarray:
    """DNABERT-S the original way: one unpadded sequence per call, mean over all tokens."""
    out = np.zeros((len(sequences), model.hidden_size), dtype=np.float32)
    for i, seq in enumerate(sequences):
        (ids,) = tokenizer.encode([seq])
        hidden = model(torch.tensor([ids], device=device))
        out[i] = hidden.mean(dim=1)[0].float().cpu().numpy()
    return out


@torch.inference_mode()
def original_esm(
    model: torch.nn.Module, alphabet: Any, proteins: Sequence[str], *, device: torch.device
) -> np.ndarray:
    """ESM-2 the original way: fair-esm's ``FastaBatchedDataset`` batches of 2048 tokens,
    its batch converter and its own forward; mean over residues ``1..min(len, 1024)``."""
    from esm import FastaBatchedDataset

    dataset = FastaBatchedDataset([str(i) for i in range(len(proteins))], list(proteins))
    batches = dataset.get_batch_indices(ORIGINAL_TOKS_PER_BATCH, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(
        dataset, collate_fn=alphabet.get_batch_converter(), batch_sampler=batches
    )
    out = np.zeros((len(proteins), model.embed_dim), dtype=np.float32)
    layer = model.num_layers
    for labels, strs, toks in loader:
        rep = model(toks.to(device), repr_layers=[layer])["representations"][layer]
        for i, label in enumerate(labels):
            n = min(1024, len(strs[i]))
            out[int(label)] = rep[i, 1 : n + 1].mean(0).float().cpu().numpy()
    return out


def run_original_style(
    paths: dict[str, str], fasta: str, length: int, *, device: torch.device
) -> dict[str, Any]:
    """The workload as VirNucPro's ``prediction.py`` runs it, in this process.

    Reading and six-frame translation use this package's functions (faster than the
    original's Biopython loops, so the comparison favours the original); the original's
    intermediate ``.pt``/FASTA files are not written.
    """
    from virnuc_dask.models.classifier import load_classifier, score
    from virnuc_dask.models.dnabert import load_dnabert
    from virnuc_dask.models.esm2 import load_esm

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with timed(times, "load_models"):
        dnabert, tokenizer = load_dnabert(paths["dnabert_model"], device=device)
        esm, alphabet = load_esm(paths["esm_model"], device=device)
        classifier = load_classifier(paths["classifier"])
    with timed(times, "read_translate"):
        reads, orfs = read_orfs_of(fasta, length)
    with timed(times, "dnabert"):
        dn = original_dnabert(dnabert, tokenizer, [o.nucleotide for o in orfs], device=device)
    with timed(times, "esm"):
        es = original_esm(esm, alphabet, [o.protein for o in orfs], device=device)
    with timed(times, "classify"):
        scores = score(classifier, np.concatenate([dn, es], axis=1))
    seconds = time.perf_counter() - t0
    return {
        "reads": reads,
        "orfs": len(orfs),
        "seconds": seconds,
        "reads_per_s": reads / seconds,
        "timings_s": {k: round(v, 3) for k, v in times.items()},
        "scores": scores,
    }


def interleaved_speedup(
    paths: dict[str, str], orfs: list, *, device: torch.device, precision: str, rounds: int = 2
) -> dict[str, float]:
    """Embedding time of the original way over this package's, on the same ORFs, the two
    alternating ``rounds`` times (best of each): a ratio that a shared machine's changing
    load disturbs far less than two long runs minutes apart."""
    from virnuc_dask.models.dnabert import load_dnabert
    from virnuc_dask.models.esm2 import load_esm
    from virnuc_dask.models.esm_fast import SdpaEsm2
    from virnuc_dask.worker.adapters import embed_dnabert, embed_esm
    from virnuc_dask.worker.plugin import DTYPES

    nucleotides = [o.nucleotide for o in orfs]
    proteins = [o.protein for o in orfs]
    dn_ref, tok = load_dnabert(paths["dnabert_model"], device=device)
    esm_ref, alphabet = load_esm(paths["esm_model"], device=device)
    dtype = DTYPES[precision]
    dn_ours = load_dnabert(paths["dnabert_model"], device=device, dtype=dtype)[0]
    esm_ours = SdpaEsm2(load_esm(paths["esm_model"], device=device, dtype=dtype)[0])
    runs = {
        ("dnabert", "original"): lambda: original_dnabert(dn_ref, tok, nucleotides, device=device),
        ("dnabert", "ours"): lambda: embed_dnabert(dn_ours, tok, nucleotides, device=device),
        ("esm", "original"): lambda: original_esm(esm_ref, alphabet, proteins, device=device),
        ("esm", "ours"): lambda: embed_esm(esm_ours, alphabet, proteins, device=device),
    }
    best = dict.fromkeys(runs, math.inf)
    for _ in range(rounds):
        for key, run in runs.items():
            t = time.perf_counter()
            run()
            sync_device(device)
            best[key] = min(best[key], time.perf_counter() - t)
    out = {f"{m}_speedup": best[(m, "original")] / best[(m, "ours")] for m in MODEL_KEYS}
    out["embedding_speedup"] = (best[("dnabert", "original")] + best[("esm", "original")]) / (
        best[("dnabert", "ours")] + best[("esm", "ours")]
    )
    out["orfs"] = len(orfs)
    return out
