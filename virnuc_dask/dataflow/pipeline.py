"""The prediction dataflow on a Dask cluster.

::

    FASTA/FASTQ blocks --read_orfs--> ORF tables, written as columns into the scratch
        (workers keep nothing; the client gets counts and read-id hashes), in waves
        --dedup--> per model and wave, the first row of every repeated input (hash buckets)
        --plan--> partitions of ``partition_rows`` ORFs (input order), each as soon as its
        rows are decided --partition (rows read back from the scratch) --embed (first
        copies only) and classify, on the worker--> embeddings.zarr (scores; embeddings
        when kept) --write-results--> part files of each block whose partitions are
        finished --assemble--> results

No stage waits for the previous one to end (:mod:`virnuc_dask.dataflow.streaming`).

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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from virnuc_dask.config import Settings
from virnuc_dask.core.formats import check_input
from virnuc_dask.core.pairs import check_mate_order
from virnuc_dask.dataflow import scratch
from virnuc_dask.dataflow.identity import prepare_out
from virnuc_dask.dataflow.outputs import BlockCounts
from virnuc_dask.dataflow.pair_outputs import write_pair_predictions
from virnuc_dask.dataflow.result_parts import ResultParts
from virnuc_dask.dataflow.streaming import Embedded, dedup_buckets, embed_inputs
from virnuc_dask.dataflow.summary import run_summary
from virnuc_dask.errors import ModelLoadError
from virnuc_dask.events import Progress, reporter
from virnuc_dask.files import atomic_write_text
from virnuc_dask.partition_result import failed_rows
from virnuc_dask.rundir import SUMMARY

logger = logging.getLogger(__name__)


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
    check_mate_order(list(settings.inputs))
    prepare_out(settings)


def predict(
    settings: Settings,
    client: Client,
    *,
    progress: Progress | None = None,
    facts: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
) -> RunResult:
    """Run the whole prediction for ``settings`` on ``client``'s cluster; ``facts``: what
    :func:`load_models` gave when the models are on the workers already, or a call that
    waits for them (a sequencing run loads them once for all its samples, while its
    first samples are read)."""
    tick = reporter(progress)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    preflight(settings)
    parts: list[ResultParts] = []

    def results(blocks: int) -> ResultParts:
        parts.append(
            ResultParts(
                client,
                Path(settings.out),
                root=root,
                buckets=dedup_buckets(settings),
                blocks=blocks,
            )
        )
        return parts[0]

    with embedding_scratch(settings) as root:
        try:
            embedded = embed_inputs(
                settings,
                client,
                root=root,
                tick=tick,
                timings=timings,
                facts=facts,
                results=results,
            )
            return _run(settings, client, tick, embedded, parts[0], timings, t0)
        finally:
            for made in parts:
                made.remove()


@contextlib.contextmanager
def embedding_scratch(settings: Settings) -> Iterator[str]:
    """The run's scratch directory (ORF tables as columns), removed at the end."""
    out = Path(settings.out)
    root = str(scratch.reset(out))
    try:
        yield root
    finally:
        scratch.remove(out)


def _run(
    settings: Settings,
    client: Client,
    tick: Callable[..., None],
    embedded: Embedded,
    parts: ResultParts,
    timings: dict[str, float],
    t0: float,
) -> RunResult:
    out = Path(settings.out)
    store, blocks, buckets = embedded.store, embedded.blocks, embedded.buckets
    plan, todo, partition_stats = embedded.plan, embedded.todo, embedded.partition_stats
    facts, empty_inputs = embedded.facts, embedded.empty_inputs
    offsets = np.cumsum([0] + embedded.counts)

    # The result files: the blocks' part files are written as their partitions finish;
    # any left (none when every partition finished) now, then all put together.
    t = time.perf_counter()
    failed = failed_rows([*store.entries().values(), *partition_stats])
    parts.submit_ready(store, [int(o) for o in offsets], int(offsets[-1]), failed)
    parts.wait_all()
    total = parts.assemble(empty_inputs)
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
    if embedded.metadata:  # the store's zarr.json files that failed their checksum
        summary["store_metadata_damaged"] = [p.as_dict() for p in embedded.metadata]
    if pair_counts:
        summary["pairs"] = pair_counts
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return RunResult(out, total, len(plan), len(plan) - len(todo), summary)
