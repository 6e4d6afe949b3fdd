"""Each precision against fp32 on the same ORFs through the pipeline's embedding path:
``bf16`` (the whole model cast), ``bf16-mixed`` (bf16 matrix products, the rest fp32)
and ``fp16``; used by ``bench``, ``doctor`` and ``benchmarks/precision_layouts.py``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.where(norms == 0, 1.0, norms)


def read_calls(ids: Sequence[str], scores: np.ndarray) -> dict[str, bool]:
    """Each read's call (True = virus) from its ORFs' scores, by the rule of the
    predictions: per chunk the largest score of each class over its frames, the chunk
    viral when the virus maximum is at least the other; the read viral when at least
    half its chunks are. ``ids`` are ORF ids ``{read}_chunk_{k}{frame}``."""
    chunks: dict[str, tuple[float, float]] = {}
    for orf_id, (s1, s2) in zip(ids, scores, strict=True):
        chunk = orf_id[:-2]
        b1, b2 = chunks.get(chunk, (-np.inf, -np.inf))
        chunks[chunk] = (max(b1, s1), max(b2, s2))
    votes: dict[str, list[bool]] = {}
    for chunk, (b1, b2) in chunks.items():
        votes.setdefault(chunk.rsplit("_chunk_", 1)[0], []).append(bool(b2 >= b1))
    return {read: 2 * sum(v) >= len(v) for read, v in votes.items()}


def precision_agreement(
    *,
    classifier: str,
    nucleotides: Sequence[str],
    proteins: Sequence[str],
    precisions: Sequence[str] = ("bf16", "fp16"),
    device: torch.device | str = "cpu",
    ids: Sequence[str] | None = None,
    **sources: str,
) -> dict[str, dict[str, Any]]:
    """Each precision against fp32 on the same ORFs, through the pipeline's embedding path;
    ``sources``: each embedding model by its setting (``esm_model=...``, ...).

    Per precision: cosine similarity of each model's embeddings (min, mean), ORF labels
    flipped (argmax of the classifier's scores), with ``ids`` (the ORFs' ids) read calls
    flipped (:func:`read_calls`), largest score difference, seconds of embedding (and
    fp32's, measured first in the same process: the first also pays any warm-up). A
    precision the device cannot run is reported with its error instead.
    ``bf16-mixed`` is :func:`.precision.to_mixed`: bf16 weights and matrix products,
    everything else (LayerNorm, softmax, the residual stream) in fp32.
    """
    from virnuc_dask.models.classifier import load_classifier, score
    from virnuc_dask.models.registry import EMBEDDING_MODELS
    from virnuc_dask.worker.batch_runner import embed
    from virnuc_dask.worker.precision import apply_precision, load_dtype

    device = torch.device(device)
    mlp = load_classifier(classifier)
    texts = {"nucleotide": nucleotides, "protein": proteins}

    def embeddings(precision: str) -> tuple[dict[str, np.ndarray], float]:
        adapters = {
            m: m.load_adapter(sources[m.source_setting], device=device, dtype=load_dtype(precision))
            for m in EMBEDDING_MODELS
        }
        for adapter in adapters.values():
            apply_precision(adapter.model, precision)
        t = time.perf_counter()
        rows = {m.key: embed(a, texts[m.embeds], device=device)[0] for m, a in adapters.items()}
        return rows, time.perf_counter() - t

    base, base_seconds = embeddings("fp32")
    base_scores = score(mlp, np.concatenate(list(base.values()), axis=1))
    base_labels = base_scores[:, 1] > base_scores[:, 0]
    base_reads = read_calls(ids, base_scores) if ids is not None else None
    out: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        try:
            rows, seconds = embeddings(precision)
        except (RuntimeError, ArithmeticError) as exc:  # e.g. no kernel for this dtype here
            out[precision] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        scores = score(mlp, np.concatenate(list(rows.values()), axis=1))
        cos = {key: _cosine(base[key], rows[key]) for key in rows}
        out[precision] = {
            "orfs": len(proteins),
            "seconds": seconds,
            **{f"{m}_cosine_min": float(c.min()) for m, c in cos.items()},
            **{f"{m}_cosine_mean": float(c.mean()) for m, c in cos.items()},
            "labels_flipped": int(((scores[:, 1] > scores[:, 0]) != base_labels).sum()),
            **(
                {}
                if base_reads is None
                else {
                    "reads": len(base_reads),
                    "reads_flipped": sum(
                        base_reads[r] != c for r, c in read_calls(ids, scores).items()
                    ),
                }
            ),
            "max_score_diff": float(np.abs(scores - base_scores).max()),
            "fp32_seconds": base_seconds,
        }
    return out
