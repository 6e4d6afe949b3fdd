"""The prediction dataflow on a Dask cluster.

::

    FASTA blocks --read_orfs--> ORF tables (one per block, held on the workers)
        --plan--> partitions of ``partition_rows`` ORFs (input order) --embed--> embeddings.zarr
        --classify (lazy from Zarr)--> scores --write_block--> part files --assemble--> results

Usage::

    from distributed import Client
    from virnuc_dask.config import load_settings
    from virnuc_dask.pipeline import predict

    settings = load_settings(inputs=["reads.fa"], overrides={"out": "out", ...})
    with Client() as client:
        result = predict(settings, client)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import zarr
from distributed import Client, as_completed, get_worker

from . import __version__
from .classifier import score
from .cluster import torch_threads_by_host
from .embed import embed_dnabert, embed_esm
from .errors import ModelLoadError, OutputDirError
from .fasta import plan_blocks
from .orfs import BlockOrfs, id_hashes, read_orfs
from .outputs import BlockCounts, assemble, write_block
from .plugin import ModelPlugin, ModelSpec, worker_models
from .store import MODEL_ARRAYS, EmbeddingStore, atomic_write_text

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class RunResult:
    """What a run produced; ``exit_code`` follows the CLI's 0/2 convention."""

    out: Path
    counts: BlockCounts
    partitions: int
    partitions_reused: int
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return 2 if self.counts.failed else 0


# -- tasks (run on workers) ---------------------------------------------------------------

def _first(partition: list[BlockOrfs]) -> BlockOrfs:
    return partition[0]


def _orf_count(table: BlockOrfs) -> int:
    return len(table.orfs)


def _summarize(table: BlockOrfs) -> tuple[int, np.ndarray]:
    return len(table.orfs), id_hashes(table)


def _take(table: BlockOrfs, lo: int, hi: int) -> list:
    return table.orfs[lo:hi]


def _gather(*pieces: list) -> list:
    return [orf for piece in pieces for orf in piece]


def embed_partition(orfs: list, meta: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Embed one partition's ORFs with both models and write its rows to the store."""
    (meta,) = meta
    models = worker_models()
    toks = meta["toks_per_batch"]
    dnabert, dn_stats = embed_dnabert(models.dnabert, models.tokenizer,
                                      [o.nucleotide for o in orfs],
                                      toks_per_batch=meta["dnabert_toks_per_batch"],
                                      device=models.device)
    esm, esm_stats = embed_esm(models.esm, models.alphabet, [o.protein for o in orfs],
                               toks_per_batch=toks, device=models.device)
    info = {"worker": get_worker().address, "dnabert": dn_stats.as_dict(),
            "esm": esm_stats.as_dict()}
    EmbeddingStore(meta["out"]).write_partition(
        meta["partition"], meta["row_start"], [o.id for o in orfs],
        {"dnabert": dnabert, "esm": esm}, info)
    return [{"partition": meta["partition"], **info}]


def _classify_rows(features: np.ndarray) -> np.ndarray:
    return score(worker_models().classifier, features)


def _model_facts() -> dict[str, Any]:
    models = worker_models()
    return {**models.dims, "precision": models.precision, "device": str(models.device)}


def _write_block(table: BlockOrfs, row_start: int, store_path: str, parts: str) -> BlockCounts:
    scores = zarr.open_array(store_path, path="scores", mode="r")
    return write_block(table, scores[row_start:row_start + len(table.orfs)], parts)


# -- client side ----------------------------------------------------------------------------

def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _model_identity(source: str) -> str:
    path = Path(source)
    if path.is_file():
        return f"{path.resolve()}:{path.stat().st_size}"
    if path.is_dir():
        return f"{path.resolve()}:" + ",".join(
            f"{p.name}={p.stat().st_size}" for p in sorted(path.iterdir()) if p.is_file())
    return source


def fingerprint(settings, precision: str) -> dict[str, Any]:
    """What must be equal for a stored partition to be reused."""
    return {
        "inputs": [{"path": str(Path(p).resolve()), "sha256": _file_digest(p)}
                   for p in settings.inputs],
        "length": settings.length,
        "esm_model": _model_identity(settings.esm_model),
        "dnabert_model": _model_identity(settings.dnabert_model),
        "classifier": _file_digest(settings.classifier),
        "precision": precision,
        "partition_rows": settings.partition_rows,
        "blocksize": settings.blocksize,
    }


def _fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _prepare_out(settings) -> Path:
    out = Path(settings.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputDirError(f"{out}: output directory is not writable: {exc.strerror}") from None
    return out


def _find_duplicates(hashes: list[np.ndarray]) -> dict[int, dict[int, str]]:
    """Per block, the positions of reads whose id already occurred earlier in the input."""
    allh = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    _, first = np.unique(allh, return_index=True)
    dup = np.ones(len(allh), dtype=bool)
    dup[first] = False
    out: dict[int, dict[int, str]] = {}
    offsets = np.cumsum([0] + [len(h) for h in hashes])
    for pos in np.flatnonzero(dup):
        block = int(np.searchsorted(offsets, pos, side="right") - 1)
        out.setdefault(block, {})[int(pos - offsets[block])] = "duplicate read id"
    return out


def _plan_partitions(counts: list[int], rows: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Cut the input-order ORF rows into partitions: (row_start, [(block, lo, hi), ...])."""
    offsets = np.cumsum([0] + counts)
    total = int(offsets[-1])
    plan = []
    for start in range(0, total, rows):
        stop = min(start + rows, total)
        pieces = []
        for block, (b0, b1) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            lo, hi = max(start, b0), min(stop, b1)
            if lo < hi:
                pieces.append((block, int(lo - b0), int(hi - b0)))
        plan.append((start, pieces))
    return plan


def _embed_resources(client: Client) -> dict[str, int] | None:
    """``{"GPU": 1}`` when every worker offers that resource, else no restriction."""
    workers = client.scheduler_info()["workers"].values()
    if workers and all(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers):
        return {"GPU": 1}
    return None


def predict(settings, client: Client, *, progress: Progress | None = None) -> RunResult:
    """Run the whole prediction for ``settings`` on ``client``'s cluster."""
    tick = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out = _prepare_out(settings)
    if settings.classifier is None:
        raise ModelLoadError(
            "no classifier given: pass --classifier 300_model.pth or 500_model.pth")
    blocks = plan_blocks(list(settings.inputs), settings.blocksize)

    spec = ModelSpec(esm_model=settings.esm_model, dnabert_model=settings.dnabert_model,
                     classifier=str(Path(settings.classifier).resolve()),
                     precision=settings.precision, model_cache=settings.model_cache,
                     offline=settings.offline, threads=settings.threads,
                     threads_by_host=tuple(torch_threads_by_host(client).items()))
    client.register_plugin(ModelPlugin(spec))
    facts = client.submit(_model_facts, pure=False).result()
    dims = {"dnabert": facts["dnabert"], "esm": facts["esm"]}
    if facts["classifier_input"] != dims["dnabert"] + dims["esm"]:
        raise ModelLoadError(
            f"{settings.classifier}: classifier expects {facts['classifier_input']} features, "
            f"but DNABERT-S ({dims['dnabert']}) + ESM-2 ({dims['esm']}) give "
            f"{dims['dnabert'] + dims['esm']}")
    timings["load_models"] = time.perf_counter() - t0

    # Read and translate every block; the tables stay on the workers.
    t = time.perf_counter()
    with dask.annotate(retries=2):
        tables = client.compute(
            db.from_sequence(blocks, npartitions=max(1, len(blocks)))
            .map(read_orfs, settings.length).to_delayed())
    tables = [client.submit(_first, f, pure=False) for f in tables]
    summaries = client.gather(client.map(_summarize, tables, pure=False))
    duplicates = _find_duplicates([h for _, h in summaries])
    for block, excluded in duplicates.items():
        tables[block] = client.submit(BlockOrfs.without_reads, tables[block], excluded,
                                      pure=False)
    counts = [n for n, _ in summaries]
    for block in duplicates:
        counts[block] = client.submit(_orf_count, tables[block], pure=False).result()
    total_rows = sum(counts)
    timings["read_translate"] = time.perf_counter() - t
    tick("read", len(blocks), len(blocks))

    # Open or create the store; reuse finished partitions of the same run.
    store = EmbeddingStore(out)
    fp = fingerprint(settings, facts["precision"])
    fp["rows"] = total_rows
    if store.exists() and not settings.overwrite:
        diffs = _fingerprint_differences(store.fingerprint, fp)
        if diffs:
            raise OutputDirError(
                f"{out} holds a run with different {', '.join(diffs)}; "
                "use another --out, or --overwrite to start afresh")
    else:
        if store.manifest.exists():
            shutil.rmtree(store.manifest)
        store = EmbeddingStore.create(out, rows=total_rows, dims=dims,
                                      chunk_rows=settings.partition_rows, classes=2,
                                      fingerprint=fp)
    plan = _plan_partitions(counts, settings.partition_rows)
    done = store.done_partitions()
    todo = [p for p in range(len(plan)) if p not in done]
    logger.info("%d ORFs in %d partitions, %d already done", total_rows, len(plan), len(done))

    # Embed the remaining partitions.
    t = time.perf_counter()
    partition_stats = _embed(client, settings, store, tables, plan, todo, tick)
    timings["embed"] = time.perf_counter() - t

    # Classify lazily from the store.
    t = time.perf_counter()
    if total_rows:
        x = da.concatenate([da.from_zarr(str(store.path), component=name)
                            for name in MODEL_ARRAYS], axis=1).rechunk({1: -1})
        scores = x.map_blocks(_classify_rows, dtype=np.float32, chunks=(x.chunks[0], (2,)),
                              name="classify")
        client.compute(da.to_zarr(scores, str(store.path), component="scores",
                                  overwrite=True, compute=False)).result()
    timings["classify"] = time.perf_counter() - t
    tick("classify", 1, 1)

    # Write the result files.
    t = time.perf_counter()
    parts = out / ".parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    offsets = np.cumsum([0] + counts)
    counted = client.gather([
        client.submit(_write_block, tables[b], int(offsets[b]), str(store.path), str(parts),
                      pure=False)
        for b in range(len(blocks))])
    total = BlockCounts()
    for c in counted:
        total.add(c)
    assemble(parts, out, len(blocks))
    shutil.rmtree(parts, ignore_errors=True)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    summary = _summary(settings, client, facts, total, plan, todo, partition_stats, timings)
    atomic_write_text(out / "run_summary.json", json.dumps(summary, indent=2) + "\n")
    return RunResult(out, total, len(plan), len(plan) - len(todo), summary)


def _embed(client, settings, store, tables, plan, todo, tick) -> list[dict[str, Any]]:
    if not todo:
        return []
    parts = []
    metas = []
    for p in todo:
        row_start, pieces = plan[p]
        slices = [dask.delayed(_take, pure=True)(tables[b], lo, hi) for b, lo, hi in pieces]
        parts.append(dask.delayed(_gather, pure=True)(*slices))
        metas.append({"partition": p, "row_start": row_start, "out": str(store.out),
                      "toks_per_batch": settings.toks_per_batch,
                      "dnabert_toks_per_batch": settings.dnabert_toks_per_batch})
    orf_bag = db.from_delayed(parts)
    meta_bag = db.from_sequence(metas, npartitions=len(metas))
    embedded = orf_bag.map_partitions(embed_partition, meta_bag, token="embed")
    resources = _embed_resources(client)
    futures = client.compute(embedded.to_delayed(), resources=resources, retries=1)
    stats = []
    for n, fut in enumerate(as_completed(futures), 1):
        stats.extend(fut.result())
        tick("embed", n, len(futures))
    return stats


def _summary(settings, client, facts, total, plan, todo, partition_stats, timings):
    workers: dict[str, dict[str, float]] = {}
    for entry in partition_stats:
        w = workers.setdefault(entry["worker"], {"partitions": 0, "orfs": 0, "seconds": 0.0})
        w["partitions"] += 1
        w["orfs"] += entry["esm"]["sequences"]
        w["seconds"] += entry["esm"]["seconds"] + entry["dnabert"]["seconds"]
    for w in workers.values():
        w["orfs_per_s"] = w["orfs"] / w["seconds"] if w["seconds"] else None
    info = client.scheduler_info()
    return {
        "version": __version__,
        "status": "partial" if total.failed else "complete",
        "inputs": list(settings.inputs),
        "length": settings.length,
        "models": {"esm": {"source": settings.esm_model, "dim": facts["esm"]},
                   "dnabert": {"source": settings.dnabert_model, "dim": facts["dnabert"]},
                   "classifier": {"source": settings.classifier,
                                  "input_dim": facts["classifier_input"]}},
        "precision": facts["precision"],
        "device": facts["device"],
        "cluster": {"scheduler": info.get("address"), "workers": len(info["workers"]),
                    "dashboard": getattr(client, "dashboard_link", None),
                    "host": socket.gethostname(), "platform": platform.platform()},
        "counts": dataclasses.asdict(total),
        "partitions": {"total": len(plan), "computed": len(todo),
                       "reused": len(plan) - len(todo)},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "reads_per_s": total.reads / timings["total"] if timings["total"] else None,
        "workers": workers,
    }
