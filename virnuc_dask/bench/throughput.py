"""The throughput measurements of ``virnuc-dask bench``: ``predict`` on a local cluster of a
given worker count (reads/s, per worker and in total, and the share of time spent
storing rows), a stage's tokens/s, FLOP/s, utilisation of the matmul peak and padding
efficiency, and the tokens/s of each embedding stage with and without the prefetch
thread; and the worker counts a local cluster here can start."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from virnuc_dask.errors import VirnucError

WORKER_START_TIMEOUT = 120.0


DEFAULT_WORKER_COUNTS = (1, 2)


def default_worker_counts(gpus: Sequence[str] | None = None) -> tuple[int, ...]:
    """1 and 2 workers, or as many as a GPU node starts (one per visible GPU)."""
    from virnuc_dask.cluster.workers import visible_gpus

    gpus = visible_gpus() if gpus is None else list(gpus)
    return tuple(n for n in DEFAULT_WORKER_COUNTS if not gpus or n <= len(gpus))


def check_worker_counts(counts: Sequence[int], gpus: Sequence[str] | None = None) -> None:
    """Refuse worker counts a local cluster cannot start: on a GPU node it starts one
    worker per visible GPU, at most (NVML is asked; no CUDA context is created)."""
    from virnuc_dask.cluster.workers import visible_gpus

    gpus = visible_gpus() if gpus is None else list(gpus)
    if gpus and max(counts) > len(gpus):
        fits = ",".join(str(n) for n in counts if n <= len(gpus)) or str(len(gpus))
        raise ValueError(
            f"--workers {','.join(map(str, counts))} asks for {max(counts)} GPU workers, but "
            f"this node has {len(gpus)} visible GPU(s) ({', '.join(gpus)}) and starts one "
            f"worker per GPU; use --workers {fits}"
        )


def run_pipeline(
    settings, workers: int, *, timeout: float = WORKER_START_TIMEOUT
) -> dict[str, Any]:
    """``predict`` on a local cluster of ``workers`` workers; wall time excludes startup."""
    from virnuc_dask.cluster.start import open_client
    from virnuc_dask.dataflow.pipeline import predict

    settings = settings.replace(workers=workers, out=f"{settings.out}-{workers}w", overwrite=True)
    with open_client(settings) as client:
        try:
            client.wait_for_workers(workers, timeout=timeout)
        except TimeoutError:
            started = len(client.scheduler_info(n_workers=-1)["workers"])
            raise VirnucError(
                f"bench: {started} of the {workers} workers asked for started within "
                f"{timeout:.0f} s; use --workers {started or 1}"
            ) from None
        t = time.perf_counter()
        result = predict(settings, client)
        seconds = time.perf_counter() - t
    summary = result.summary
    reads = result.counts.reads
    per_worker = {
        addr: {
            "partitions": w["partitions"],
            "orfs": w["orfs"],
            "embed_seconds": round(w["seconds"], 3),
            "store_seconds": round(w.get("store_seconds", 0.0), 3),
            "orfs_per_s": w["orfs_per_s"],
        }
        for addr, w in summary["workers"].items()
    }
    embed_s = sum(w["seconds"] for w in summary["workers"].values())
    store_s = sum(w.get("store_seconds", 0.0) for w in summary["workers"].values())
    return {
        "workers": workers,
        "reads": reads,
        "orfs": result.counts.orfs,
        # Writing rows runs in a task of its own beside the next embedding task: had
        # it stayed in the embedding task, the device would have waited this share.
        "store_seconds": store_s,
        "store_share": store_s / (embed_s + store_s) if embed_s + store_s else None,
        "seconds": seconds,
        "reads_per_s": reads / seconds,
        "reads_per_s_per_worker": reads / seconds / workers,
        "timings_s": summary["timings_s"],
        "embedding": summary["embedding"],
        "per_worker": per_worker,
        "out": str(result.out),
    }


def stage_figures(
    stage: dict[str, Any], flops: float, peak: float, workers: int = 1
) -> dict[str, float]:
    """Tokens/s, FLOP/s, utilisation and padding efficiency of one stage of a run.

    A run's stage seconds are summed over its ``workers``, which embed at the same time
    on the same machine: the machine did the stage in ``seconds / workers``.
    """
    seconds = stage["seconds"] / workers
    return {
        "tokens": stage["real_tokens"],
        "padded_tokens": stage["padded_tokens"],
        "batches": stage["batches"],
        "seconds": seconds,
        "workers": workers,
        "worker_seconds": stage["seconds"],
        "tokens_per_s": stage["real_tokens"] / seconds,
        "flops": flops,
        "flop_per_s": flops / seconds,
        "utilization": flops / seconds / peak,
        "padding_efficiency": stage["real_tokens"] / stage["padded_tokens"],
    }


def prefetch_effect(
    adapters: dict[str, Any], orfs: list, *, device: torch.device, rounds: int = 2
) -> dict[str, dict[str, float]]:
    """Tokens/s of each stage on ``orfs`` with and without the prefetch thread (best of
    ``rounds``, alternating, so that both see the same machine), and the share of the
    stage's time spent preparing batches (tokenising, padding, copying) when not
    overlapped: what the prefetch thread can hide at most."""
    from virnuc_dask.models.registry import embedding_model
    from virnuc_dask.worker.batch_runner import embed

    out: dict[str, dict[str, float]] = {}
    for stage, adapter in adapters.items():
        texts = [getattr(o, embedding_model(stage).embeds) for o in orfs]
        best = {True: 0.0, False: 0.0}
        share = 1.0
        for _ in range(rounds):
            for prefetch in (True, False):
                stats = embed(adapter, texts, device=device, prefetch=prefetch)[1]
                best[prefetch] = max(best[prefetch], stats.real_tokens / stats.seconds)
                if not prefetch:
                    share = min(share, stats.prepare_seconds / stats.seconds)
        out[stage] = {
            "tokens_per_s_prefetch": best[True],
            "tokens_per_s_inline": best[False],
            "ratio": best[True] / best[False],
            "prepare_share": share,
        }
    return out
