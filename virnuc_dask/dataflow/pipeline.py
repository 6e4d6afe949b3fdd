"""The prediction dataflow on a Dask cluster.

::

    FASTA/FASTQ blocks --read_orfs--> ORF tables, written as columns into the scratch
        (workers keep nothing; the client gets counts and read-id hashes)
        --dedup--> per model, the first row of every repeated input (hash buckets)
        --plan--> partitions of ``partition_rows`` ORFs (input order) --partition (rows read
        back from the scratch) --embed (first copies only)--> embeddings.zarr
        --classify (lazy from Zarr)--> scores --write_block--> part files --assemble--> results

Usage::

    from distributed import Client
    from virnuc_dask.config import load_settings
    from virnuc_dask.dataflow.pipeline import predict

    settings = load_settings(inputs=["reads.fa"], overrides={"out": "out", ...})
    with Client() as client:
        result = predict(settings, client)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr
from distributed import Client, wait

from virnuc_dask.cluster.workers import torch_threads_by_host
from virnuc_dask.core.fasta import FastaBlock, check_input, plan_blocks
from virnuc_dask.core.orfs import BlockOrfs, Selection, id_hashes, read_orfs
from virnuc_dask.core.plan import (
    duplicate_reads,
    failed_rows,
    files_without_records,
    plan_partitions,
    rows_in_block,
)
from virnuc_dask.core.translate import six_frame_orfs
from virnuc_dask.dataflow import scratch
from virnuc_dask.dataflow.dashboard import (
    EMBED_STAGE,
    STORE_STAGE,
    ThroughputMetrics,
    task_key,
    unique_key,
)
from virnuc_dask.dataflow.identity import fingerprint, fingerprint_differences, prepare_out
from virnuc_dask.dataflow.outputs import BlockCounts, assemble, remove_results, write_block
from virnuc_dask.dataflow.scratch import (
    dedup_bucket,
    read_column,
    read_reads,
    write_table,
)
from virnuc_dask.dataflow.scratch import sources as dedup_sources
from virnuc_dask.dataflow.store import (
    MODEL_ARRAYS,
    EmbeddingStore,
    atomic_write_text,
    lazy_rows,
    naming,
)
from virnuc_dask.dataflow.summary import model_facts, run_summary
from virnuc_dask.errors import ModelLoadError, OutputDirError, SystemicFailure
from virnuc_dask.models.classifier import score
from virnuc_dask.rundir import SUMMARY
from virnuc_dask.worker.plugin import (
    EMBED_RESOURCE,
    ModelPlugin,
    ModelSpec,
    load_failures,
    model_status,
    wait_for_models,
    worker_models,
)
from virnuc_dask.worker.task import (
    SYSTEMIC_FAILURES,
    PartitionRows,
    embed_partition,
    store_partition,
)

logger = logging.getLogger(__name__)

#: Input bytes per dedup hash bucket (a bucket task holds ~40 bytes per ORF of its share).
DEDUP_BUCKET_BYTES = 64 * 2**20

# ``progress(stage, done, total, **detail)``; stages and details: see virnuc_dask.cli.progress.
Progress = Callable[..., None]


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


def _read_block(
    block: FastaBlock,
    chunk_size: int,
    root: str,
    buckets: int,
    excluded: dict[int, str] | None = None,
    select: Selection = six_frame_orfs,
) -> tuple[int, np.ndarray]:
    """Read and translate one block into the scratch; (ORFs, read id hashes)."""
    table = read_orfs(block, chunk_size, select)
    if excluded:
        table = table.without_reads(excluded)
    write_table(root, table, buckets=buckets)
    return len(table.orfs), id_hashes(table)


def _load_partition(
    root: str, pieces: list[tuple[int, int, int]], row_start: int, rows: int, buckets: int
) -> PartitionRows:
    ids, nucleotides, proteins = [], [], []
    for block, lo, hi in pieces:
        ids += read_column(root, block, "ids", lo, hi)
        nucleotides += read_column(root, block, "nucleotide", lo, hi)
        proteins += read_column(root, block, "protein", lo, hi)
    found = None
    if buckets:
        found = {
            m: dedup_sources(root, m, buckets, row_start, row_start + rows) for m in MODEL_ARRAYS
        }
    return PartitionRows(ids, nucleotides, proteins, found)


def _classify_rows(features: np.ndarray) -> np.ndarray:
    return score(worker_models().classifier, features)


def _write_block(
    root: str,
    block: int,
    row_start: int,
    store_path: str,
    parts: str,
    failed: dict[int, tuple[str, str]],
) -> BlockCounts:
    reads = read_reads(root, block)
    ids = read_column(root, block, "ids")
    group = zarr.open_group(store_path, mode="r")
    stop = row_start + len(ids)
    mine = {r - row_start: f for r, f in failed.items() if row_start <= r < stop}
    if failed and "dnabert_source" in group:
        # A copy of an input that failed failed too: its DNABERT-S row, or its ESM-2 row
        # (not computed for a row that failed in DNABERT-S), is missing.
        for model in MODEL_ARRAYS:
            source = group[f"{model}_source"][row_start:stop]
            for i in np.flatnonzero(source != np.arange(row_start, stop)):
                f = failed.get(int(source[i]))
                if f is not None and (model == "esm" or f[0] == "dnabert"):
                    mine.setdefault(int(i), f)
    return write_block(BlockOrfs(block, reads, ids), group["scores"][row_start:stop], parts, mine)


# -- client side ----------------------------------------------------------------------------


# Tasks that use the models ask for the resource a worker offers once its models are
# loaded: one at a time per worker, never on a worker whose load failed.
MODEL_RESOURCES = {EMBED_RESOURCE: 1}
# How long the embedding loop waits for a partition before it checks that some worker
# can still embed.
HEALTH_CHECK_S = 30.0


def _check_embedding_workers(client: Client) -> None:
    """Raise when no connected worker has (or is loading) the models."""
    statuses = model_status(client)
    if any(s["state"] in ("new", "loading", "ready") for s in statuses.values()):
        return
    reasons = "; ".join(f["error"] for f in load_failures(client))
    raise ModelLoadError(
        "no worker is left that can embed"
        + (f": {reasons}" if reasons else " (every worker has gone)")
    )


def preflight(settings) -> None:
    """Cheap checks of inputs, classifier and output directory, before a cluster starts.

    Raises what :func:`predict` would raise later for the same problem.
    """
    if settings.classifier is None:
        raise ModelLoadError(
            "no classifier given: pass --classifier 300_model.pth or 500_model.pth"
        )
    if not Path(settings.classifier).is_file():
        raise ModelLoadError(f"{settings.classifier}: classifier file not found")
    for path in settings.inputs:
        check_input(path)
    prepare_out(settings)


@dataclasses.dataclass
class Embedded:
    """What :func:`embed_inputs` leaves: the ORF tables in the scratch ``root``, the store
    holding every ORF's embeddings (rows in input order), the partition plan and stats."""

    store: EmbeddingStore
    blocks: list
    root: str
    buckets: int
    counts: list[int]
    plan: list[tuple[int, list[tuple[int, int, int]]]]
    todo: list[int]
    partition_stats: list[dict[str, Any]]
    facts: dict[str, Any]
    empty_inputs: list[tuple[str, str, str]]
    reads: int
    dedup: dict[str, dict[str, int]]

    @property
    def rows(self) -> int:
        return sum(self.counts)


def predict(settings, client: Client, *, progress: Progress | None = None) -> RunResult:
    """Run the whole prediction for ``settings`` on ``client``'s cluster."""
    tick = progress or (lambda stage, done, total, **detail: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    preflight(settings)
    with embedding_scratch(settings) as root:
        embedded = embed_inputs(settings, client, root=root, tick=tick, timings=timings)
        return _run(settings, client, tick, embedded, timings, t0)


@contextlib.contextmanager
def embedding_scratch(settings) -> Iterator[str]:
    """The run's scratch directory (ORF tables as columns), removed at the end."""
    out = Path(settings.out)
    root = str(scratch.reset(out))
    try:
        yield root
    finally:
        scratch.remove(out)


def embed_inputs(
    settings,
    client: Client,
    *,
    root: str,
    tick: Progress,
    timings: dict[str, float],
    select: Selection = six_frame_orfs,
    fingerprint_extra: dict[str, Any] | None = None,
    check_counts: Callable[[list, list[int]], None] | None = None,
) -> Embedded:
    """Load the models, read and translate the inputs, embed every ORF into the store.

    ``select`` picks a chunk's ORFs (prediction: every stop-free frame);
    ``fingerprint_extra`` (what the selection depends on) joins the store's fingerprint;
    ``check_counts(blocks, orfs_per_block)`` may reject the inputs before anything is
    embedded. Without ``settings.classifier`` no classifier is loaded (training).
    """
    t0 = time.perf_counter()
    out = Path(settings.out)
    blocks = plan_blocks(list(settings.inputs), settings.blocksize)
    tick("models", 0, 1)

    spec = ModelSpec(
        esm_model=settings.esm_model,
        dnabert_model=settings.dnabert_model,
        classifier=None
        if settings.classifier is None
        else str(Path(settings.classifier).resolve()),
        precision=settings.precision,
        device=settings.device,
        model_cache=settings.model_cache,
        offline=settings.offline,
        threads=settings.threads,
        threads_by_host=tuple(torch_threads_by_host(client).items()),
    )
    registered = time.time()
    client.register_plugin(ModelPlugin(spec))
    client.register_plugin(ThroughputMetrics())
    # Bounded: stops when every worker failed to load (naming each) or after a timeout.
    statuses = wait_for_models(client, since=registered)
    facts = {**model_facts(statuses), "registered": registered}
    dims = {"dnabert": facts["dnabert"], "esm": facts["esm"]}
    if (
        settings.classifier is not None
        and facts["classifier_input"] != dims["dnabert"] + dims["esm"]
    ):
        raise ModelLoadError(
            f"{settings.classifier}: classifier expects {facts['classifier_input']} features, "
            f"but DNABERT-S ({dims['dnabert']}) + ESM-2 ({dims['esm']}) give "
            f"{dims['dnabert'] + dims['esm']}"
        )
    timings["load_models"] = time.perf_counter() - t0
    tick("models", 1, 1, precision=facts["precision"], device=facts["device"])
    # Read and translate every block into the scratch; only counts come back.
    t = time.perf_counter()
    tick("read", 0, len(blocks))
    buckets = _dedup_buckets(settings)
    # (No retries: a read fails because of the file, and would fail again.)
    summaries = client.gather(
        client.map(
            _read_block,
            blocks,
            chunk_size=settings.length,
            root=root,
            buckets=buckets,
            select=select,
            key=[unique_key("read_orfs") for _ in blocks],
        )
    )
    empty_inputs = files_without_records(blocks, [len(h) for _, h in summaries])
    duplicates = duplicate_reads([h for _, h in summaries])
    counts = [n for n, _ in summaries]
    reads = sum(len(h) for _, h in summaries)
    del summaries
    for block, excluded in duplicates.items():  # rare: written again without those reads
        counts[block] = client.submit(
            _read_block,
            blocks[block],
            settings.length,
            root,
            buckets,
            excluded,
            select,
            key=unique_key("read_orfs"),
        ).result()[0]
    total_rows = sum(counts)
    offsets = np.cumsum([0] + counts)
    dedup = {m: {"unique": total_rows, "total": total_rows} for m in MODEL_ARRAYS}
    if buckets and total_rows:
        jobs = [(m, k) for m in MODEL_ARRAYS for k in range(buckets)]
        found = client.gather(
            client.map(
                dedup_bucket,
                [root] * len(jobs),
                [m for m, _ in jobs],
                [k for _, k in jobs],
                offsets=[int(o) for o in offsets[:-1]],
                key=[unique_key("dedup") for _ in jobs],
            )
        )
        for m in MODEL_ARRAYS:
            dedup[m]["unique"] = sum(
                u for (mm, _), (_, u) in zip(jobs, found, strict=True) if mm == m
            )
    timings["read_translate"] = time.perf_counter() - t
    if check_counts is not None:
        check_counts(blocks, counts)
    tick("read", len(blocks), len(blocks), reads=reads, orfs=total_rows)

    # Open or create the store; reuse finished partitions of the same run.
    store = EmbeddingStore(out)
    fp = {**fingerprint(settings, facts["precision"]), **(fingerprint_extra or {})}
    fp["rows"] = total_rows
    if store.exists() and not settings.overwrite:
        diffs = fingerprint_differences(store.fingerprint, fp)
        if diffs:
            raise OutputDirError(
                f"{out} holds a run with different {', '.join(diffs)}; "
                "use another --out, or --overwrite to start afresh"
            )
    else:
        # Results of the run being replaced must not outlive it next to the new store.
        remove_results(out)
        store = EmbeddingStore.create(
            out,
            rows=total_rows,
            dims=dims,
            chunk_rows=settings.partition_rows,
            classes=2,
            fingerprint=fp,
            dedup=bool(buckets),
        )
    plan = plan_partitions(counts, settings.partition_rows)
    done = {p for p in store.done_partitions() if p < len(plan)}
    todo = [p for p in range(len(plan)) if p not in done]
    logger.info("%d ORFs in %d partitions, %d already done", total_rows, len(plan), len(done))
    if buckets:
        logger.info(
            "inputs embedded once: DNABERT-S %d of %d, ESM-2 %d of %d",
            dedup["dnabert"]["unique"],
            total_rows,
            dedup["esm"]["unique"],
            total_rows,
        )

    # Embed the remaining partitions.
    t = time.perf_counter()
    tick(
        "embed",
        0,
        len(todo),
        orfs_total=total_rows,
        orfs_reused=total_rows - sum(hi - lo for p in todo for _, lo, hi in plan[p][1]),
    )
    partition_stats = _embed(client, settings, store, root, buckets, plan, todo, tick)
    timings["embed"] = time.perf_counter() - t
    return Embedded(
        store,
        blocks,
        root,
        buckets,
        counts,
        plan,
        todo,
        partition_stats,
        facts,
        empty_inputs,
        reads,
        dedup,
    )


def _dedup_buckets(settings) -> int:
    """Hash buckets of a run with dedup: one per ~64 MiB of (decompressed) input."""
    if not settings.dedup:
        return 0
    size = 0
    for path in settings.inputs:
        nbytes, compressed = check_input(path)
        size += nbytes * (4 if compressed else 1)
    return max(1, -(-size // DEDUP_BUCKET_BYTES))


def _run(settings, client, tick, embedded: Embedded, timings, t0) -> RunResult:
    out = Path(settings.out)
    store, blocks, root, buckets = (
        embedded.store,
        embedded.blocks,
        embedded.root,
        embedded.buckets,
    )
    plan, todo, partition_stats = embedded.plan, embedded.todo, embedded.partition_stats
    facts, empty_inputs, total_rows = embedded.facts, embedded.empty_inputs, embedded.rows
    offsets = np.cumsum([0] + embedded.counts)

    # Classify lazily from the store.
    t = time.perf_counter()
    tick("classify", 0, 1)
    if total_rows:
        x = da.concatenate([lazy_rows(store.path, name) for name in MODEL_ARRAYS], axis=1).rechunk(
            {1: -1}
        )
        with dask.annotate(resources=MODEL_RESOURCES):  # the classifier is a model too
            scores = x.map_blocks(
                _classify_rows, dtype=np.float32, chunks=(x.chunks[0], (2,)), token="classify"
            )
        # Row chunks are the store's chunks: each task writes whole chunks of the array.
        # Unfused, so that "classify" stays a task name of its own on the dashboard.
        with naming(store.path):
            client.compute(
                da.store(scores, store.group("r+")["scores"], lock=False, compute=False),
                optimize_graph=False,
            ).result()
    timings["classify"] = time.perf_counter() - t
    tick("classify", 1, 1, orfs=total_rows)

    # Write the result files.
    t = time.perf_counter()
    tick("write", 0, len(blocks))
    parts = out / ".parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    # Failed records: of partitions finished earlier, and of this run's (some unrecorded).
    failed = failed_rows([*store.entries().values(), *partition_stats])
    try:
        counted = client.gather(
            [
                client.submit(
                    _write_block,
                    root,
                    b,
                    int(offsets[b]),
                    str(store.path),
                    str(parts),
                    failed if buckets else rows_in_block(failed, offsets, b),
                    key=unique_key("write-results"),
                )
                for b in range(len(blocks))
            ]
        )
        total = BlockCounts(failed=len(empty_inputs))
        for c in counted:
            total.add(c)
        assemble(parts, out, len(blocks), empty_inputs)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    timings["write"] = time.perf_counter() - t
    tick("write", len(blocks), len(blocks), reads=total.reads)
    timings["total"] = time.perf_counter() - t0

    summary = run_summary(settings, client, facts, total, plan, todo, partition_stats, timings)
    summary["dedup"] = {"enabled": bool(buckets), **embedded.dedup}
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return RunResult(out, total, len(plan), len(plan) - len(todo), summary)


def _embed(client, settings, store, root, buckets, plan, todo, tick) -> list[dict[str, Any]]:
    if not todo:
        return []
    # Embedding tasks hold the device (one GPU=1 per worker with its models loaded);
    # reading, slicing and writing run beside them in the workers' other threads.
    resources = MODEL_RESOURCES
    stored = []
    for p in todo:
        row_start, pieces = plan[p]
        rows = sum(hi - lo for _, lo, hi in pieces)
        part = dask.delayed(_load_partition, pure=True)(
            root, pieces, row_start, rows, buckets, dask_key_name=unique_key("partition")
        )  # the scratch is this run's
        meta = {
            "partition": p,
            "row_start": row_start,
            "out": str(store.out),
            "toks_per_batch": settings.toks_per_batch,
            "dnabert_toks_per_batch": settings.dnabert_toks_per_batch,
        }
        with dask.annotate(resources=resources):
            embedded = dask.delayed(embed_partition, pure=True)(
                part, meta, dask_key_name=task_key(EMBED_STAGE, part, meta)
            )
        stored.append(
            dask.delayed(store_partition, pure=True)(
                embedded, dask_key_name=task_key(STORE_STAGE, embedded)
            )
        )
    # Unoptimised: fusing would merge the embedding and store tasks (and lose the
    # annotation that keeps only one embedding task per device).
    futures: list = []
    stats = []
    streak = 0  # failed records of partitions in which every record failed, in a row
    try:
        for n, fut in enumerate(_completed(client, stored, futures), 1):
            entry = fut.result()
            stats.append(entry)
            rows = entry["rows"]
            streak = streak + rows if rows and len(entry["failed"]) == rows else 0
            if streak >= SYSTEMIC_FAILURES:
                raise SystemicFailure(
                    f"embedding stopped: {streak} records in a row failed, the last "
                    f"{entry['failed'][-1]['id']}: {entry['failed'][-1]['error']}; the "
                    "fault is not in the input records: check the model files, the "
                    "device and its driver"
                )
            tick("embed", n, len(stored), partitions=[entry])
    except BaseException:
        client.cancel(futures)
        raise
    return stats


def _completed(client: Client, work: list, futures: list):
    """Compute the ``work`` (delayed objects) a few at a time; yield each future as it
    finishes (all of them are appended to ``futures``, for cancelling).

    About two partitions per worker are in flight, and the next is submitted when one
    finishes: the scheduler assigns a task that asks for a resource when it is
    submitted, so submitting everything at once would deal the partitions out in
    advance, evenly, whatever each device's speed. This way the worker that finishes
    first gets the next partition, and a faster GPU takes a larger share. Every
    ``HEALTH_CHECK_S`` without a finished partition, checks that a worker able to
    embed is left (else the tasks would wait for ever).
    """
    todo = list(work)
    pending: list = []

    def top_up() -> None:
        window = max(2, 2 * len(client.scheduler_info(n_workers=-1)["workers"]))
        while todo and len(pending) < window:
            future = client.compute(todo.pop(0), retries=1, optimize_graph=False)
            futures.append(future)
            pending.append(future)

    top_up()
    while pending:
        try:
            done, rest = wait(pending, timeout=HEALTH_CHECK_S, return_when="FIRST_COMPLETED")
        except TimeoutError:
            _check_embedding_workers(client)
            continue
        pending[:] = list(rest)
        top_up()
        yield from done
