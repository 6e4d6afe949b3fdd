"""The original VirNucPro way, for ``bench`` to compare against: each model's
``original_embed`` (DNABERT-S one sequence per call, unpadded; ESM-2 through fair-esm's
``FastaBatchedDataset`` in 2048-token batches and fair-esm's own forward); one process."""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import numpy as np
import torch

from virnuc_dask.bench.kit import read_orfs_of, sync_device, timed
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS


def run_original_style(
    paths: dict[str, str], fasta: str, length: int, *, device: torch.device
) -> dict[str, Any]:
    """The workload as VirNucPro's ``prediction.py`` runs it, in this process.

    Reading and six-frame translation use this package's functions (faster than the
    original's Biopython loops, so the comparison favours the original); the original's
    intermediate ``.pt``/FASTA files are not written.
    """
    from virnuc_dask.models.classifier import load_classifier, score

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with timed(times, "load_models"):
        adapters = {
            m: m.load_adapter(paths[m.source_setting], device=device) for m in EMBEDDING_MODELS
        }
        classifier = load_classifier(paths["classifier"])
    with timed(times, "read_translate"):
        reads, orfs = read_orfs_of(fasta, length)
    rows = []
    for m, adapter in adapters.items():
        with timed(times, m.key):
            texts = [getattr(o, m.embeds) for o in orfs]
            rows.append(m.implementation().original_embed(adapter, texts, device=device))
    with timed(times, "classify"):
        scores = score(classifier, np.concatenate(rows, axis=1))
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
    from virnuc_dask.worker.batch_runner import embed
    from virnuc_dask.worker.precision import apply_precision, load_dtype

    runs = {}
    for m in EMBEDDING_MODELS:
        texts = [getattr(o, m.embeds) for o in orfs]
        reference = m.load_adapter(paths[m.source_setting], device=device)
        ours = m.load_adapter(paths[m.source_setting], device=device, dtype=load_dtype(precision))
        apply_precision(ours.model, precision)
        original = m.implementation().original_embed
        runs[(m.key, "original")] = functools.partial(original, reference, texts, device=device)
        runs[(m.key, "ours")] = functools.partial(embed, ours, texts, device=device)
    best = dict.fromkeys(runs, math.inf)
    for _ in range(rounds):
        for key, run in runs.items():
            t = time.perf_counter()
            run()
            sync_device(device)
            best[key] = min(best[key], time.perf_counter() - t)
    out = {f"{m}_speedup": best[(m, "original")] / best[(m, "ours")] for m in MODEL_KEYS}
    out["embedding_speedup"] = sum(best[(m, "original")] for m in MODEL_KEYS) / sum(
        best[(m, "ours")] for m in MODEL_KEYS
    )
    out["orfs"] = len(orfs)
    return out
