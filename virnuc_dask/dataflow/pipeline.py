"""The prediction dataflow on a Dask cluster.

::

    FASTA/FASTQ blocks --read_orfs--> ORF tables, written as columns into the scratch
        (workers keep nothing; the client gets counts and read-id hashes)
        --dedup--> per model, the first row of every repeated input (hash buckets)
        --plan--> partitions of ``partition_rows`` ORFs (input order) --partition (rows read
        back from the scratch) --embed (first copies only) and classify, on the worker-->
        embeddings.zarr (scores; embeddings when kept) --write_block--> part files
        --assemble--> results

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

import numpy as np
from distributed import Client

from virnuc_dask.config import Settings
from virnuc_dask.core.formats import check_input, plan_blocks
from virnuc_dask.core.orfs import Selection
from virnuc_dask.core.pairs import PairRows, check_mates, mate_layout, mate_pairs, with_mates
from virnuc_dask.core.plan import (
    duplicate_reads,
    files_without_records,
    plan_partitions,
    rows_in_block,
)
from virnuc_dask.core.translate import six_frame_orfs
from virnuc_dask.dataflow import scratch
from virnuc_dask.dataflow.block_tasks import read_block_task, write_block_task
from virnuc_dask.dataflow.dashboard import (
    unique_key,
)
from virnuc_dask.dataflow.embedding_graph import embed_partitions
from virnuc_dask.dataflow.identity import fingerprint, open_store, prepare_out
from virnuc_dask.dataflow.integrity import damaged_partitions
from virnuc_dask.dataflow.models_on_workers import load_models
from virnuc_dask.dataflow.outputs import BlockCounts, assemble
from virnuc_dask.dataflow.pair_outputs import write_pair_predictions
from virnuc_dask.dataflow.run_scores import RUN_TABLE
from virnuc_dask.dataflow.scratch import (
    dedup_bucket,
)
from virnuc_dask.dataflow.store import EmbeddingStore
from virnuc_dask.dataflow.summary import run_summary
from virnuc_dask.errors import ModelLoadError
from virnuc_dask.events import Progress, reporter
from virnuc_dask.files import atomic_write_text
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS
from virnuc_dask.partition_result import PartitionResult, failed_rows
from virnuc_dask.rundir import SUMMARY

logger = logging.getLogger(__name__)

#: Input bytes per dedup hash bucket (a bucket task holds ~40 bytes per ORF of its share).
DEDUP_BUCKET_BYTES = 64 * 2**20


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


# -- client side ----------------------------------------------------------------------------


def preflight(settings: Settings) -> None:
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
    partition_stats: list[PartitionResult]
    facts: dict[str, Any]
    empty_inputs: list[tuple[str, str, str]]
    reads: int
    dedup: dict[str, dict[str, int]]
    damaged: dict[int, str]
    pairs: list[PairRows] = dataclasses.field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.counts)


def predict(
    settings: Settings,
    client: Client,
    *,
    progress: Progress | None = None,
    facts: dict[str, Any] | None = None,
) -> RunResult:
    """Run the whole prediction for ``settings`` on ``client``'s cluster; ``facts``: what
    :func:`load_models` gave when the models are on the workers already (a sequencing
    run loads them once for all its samples)."""
    tick = reporter(progress)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    preflight(settings)
    with embedding_scratch(settings) as root:
        embedded = embed_inputs(
            settings, client, root=root, tick=tick, timings=timings, facts=facts
        )
        return _run(settings, client, tick, embedded, timings, t0)


@contextlib.contextmanager
def embedding_scratch(settings: Settings) -> Iterator[str]:
    """The run's scratch directory (ORF tables as columns), removed at the end."""
    out = Path(settings.out)
    root = str(scratch.reset(out))
    try:
        yield root
    finally:
        scratch.remove(out)


def embed_inputs(
    settings: Settings,
    client: Client,
    *,
    root: str,
    tick: Callable[..., None],
    timings: dict[str, float],
    select: Selection = six_frame_orfs,
    fingerprint_extra: dict[str, Any] | None = None,
    check_counts: Callable[[list, list[int]], None] | None = None,
    facts: dict[str, Any] | None = None,
) -> Embedded:
    """Load the models, read and translate the inputs, embed every ORF into the store.

    ``select`` picks a chunk's ORFs (prediction: every stop-free frame);
    ``fingerprint_extra`` (what the selection depends on) joins the store's fingerprint;
    ``check_counts(blocks, orfs_per_block)`` may reject the inputs before anything is
    embedded. Without ``settings.classifier`` no classifier is loaded (training).
    """
    t0 = time.perf_counter()
    layout = mate_layout(settings.inputs)
    blocks = with_mates(plan_blocks(list(settings.inputs), settings.blocksize), layout)
    tick("models", 0, 1)
    tick("read", 0, len(blocks))
    # Read and translate every block into the scratch (only counts come back), submitted
    # before the models are loaded: the workers read while they load them.
    buckets = _dedup_buckets(settings)
    # (No retries: a read fails because of the file, and would fail again.)
    reading = client.map(
        read_block_task,
        blocks,
        chunk_size=settings.length,
        root=root,
        buckets=buckets,
        select=select,
        key=[unique_key("read_orfs") for _ in blocks],
    )
    try:
        if facts is None:
            facts = load_models(settings, client)
        timings["load_models"] = time.perf_counter() - t0
        tick("models", 1, 1, precision=facts["precision"], device=facts["device"])
        summaries = client.gather(reading)
    except BaseException:
        client.cancel(reading)  # on a shared cluster: the blocks not yet read are not read
        raise
    dims = {m: facts[m] for m in MODEL_KEYS}
    t = t0  # reading started with the model load
    del reading  # the workers release the summaries
    # Mates out of order stop the run here, before anything is embedded or stored.
    pairs = check_mates(blocks, [m for _, _, m in summaries], mate_pairs(layout))
    empty_inputs = files_without_records(blocks, [len(h) for _, h, _ in summaries])
    duplicates = duplicate_reads([h for _, h, _ in summaries])
    counts = [n for n, _, _ in summaries]
    reads = sum(len(h) for _, h, _ in summaries)
    del summaries
    for block, excluded in duplicates.items():  # rare: written again without those reads
        counts[block] = client.submit(
            read_block_task,
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
    dedup = {m: {"unique": total_rows, "total": total_rows} for m in MODEL_KEYS}
    if buckets and total_rows:
        jobs = [(m, k) for m in MODEL_KEYS for k in range(buckets)]
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
        for m in MODEL_KEYS:
            dedup[m]["unique"] = sum(
                u for (mm, _), (_, u) in zip(jobs, found, strict=True) if mm == m
            )
    timings["read_translate"] = time.perf_counter() - t
    if check_counts is not None:
        check_counts(blocks, counts)
    tick("read", len(blocks), len(blocks), reads=reads, orfs=total_rows)

    fp = {**fingerprint(settings, facts["precision"]), **(fingerprint_extra or {})}
    fp["rows"] = total_rows
    store = open_store(
        settings, fp, dims=dims, dedup=bool(buckets), classes=2 if settings.classifier else 0
    )
    plan = plan_partitions(counts, settings.partition_rows)
    damaged = damaged_partitions(client, store, plan)
    done = {p for p in store.done_partitions() if p < len(plan)}
    todo = [p for p in range(len(plan)) if p not in done]
    logger.info("%d ORFs in %d partitions, %d already done", total_rows, len(plan), len(done))
    if buckets:
        logger.info(
            "inputs embedded once: %s",
            ", ".join(
                f"{m.name} {dedup[m.key]['unique']} of {total_rows}" for m in EMBEDDING_MODELS
            ),
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
    partition_stats = embed_partitions(
        client, settings, store, root, buckets, plan, todo, tick, run_scores=facts.get(RUN_TABLE)
    )
    timings["embed"] = time.perf_counter() - t
    if settings.classifier is not None:  # inside the embedding tasks, summed over them
        timings["classify"] = sum(e.classify_seconds for e in partition_stats)
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
        damaged,
        pairs,
    )


def _dedup_buckets(settings: Settings) -> int:
    """Hash buckets of a run with dedup: one per ~64 MiB of (decompressed) input."""
    if not settings.dedup:
        return 0
    size = 0
    for path in settings.inputs:
        nbytes, compressed = check_input(path)
        size += nbytes * (4 if compressed else 1)
    return max(1, -(-size // DEDUP_BUCKET_BYTES))


def _run(
    settings: Settings,
    client: Client,
    tick: Callable[..., None],
    embedded: Embedded,
    timings: dict[str, float],
    t0: float,
) -> RunResult:
    out = Path(settings.out)
    store, blocks, root, buckets = (
        embedded.store,
        embedded.blocks,
        embedded.root,
        embedded.buckets,
    )
    plan, todo, partition_stats = embedded.plan, embedded.todo, embedded.partition_stats
    facts, empty_inputs = embedded.facts, embedded.empty_inputs
    offsets = np.cumsum([0] + embedded.counts)

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
                    write_block_task,
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
    pair_counts = write_pair_predictions(out, embedded.pairs)
    timings["write"] = time.perf_counter() - t
    tick("write", len(blocks), len(blocks), reads=total.reads)
    timings["total"] = time.perf_counter() - t0

    end = time.time()
    summary = run_summary(
        settings,
        client,
        facts,
        total,
        plan,
        todo,
        partition_stats,
        timings,
        span=(end - timings["total"], end),
    )
    summary["dedup"] = {"enabled": bool(buckets), **embedded.dedup}
    summary["partitions"]["damaged"] = [
        {"partition": p, "problem": why} for p, why in sorted(embedded.damaged.items())
    ]
    if pair_counts:
        summary["pairs"] = pair_counts
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return RunResult(out, total, len(plan), len(plan) - len(todo), summary)
