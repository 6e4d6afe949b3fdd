"""A sequencing run: every sample of a samplesheet on one cluster, the models loaded
once per worker.

Each sample is predicted exactly as ``predict`` predicts it alone (its files, the run's
settings, ``RUN/<sample>/`` as its output directory, its own store), so a sample's
outputs are those of a one-sample run and it resumes on its own: a sample added to the
sheet is the only one computed, a sample whose files changed starts afresh, the others
reuse every partition.  Several samples are in flight at once on the one cluster, so
one sample's reading, dedup and writing overlap another's embedding and a small
sample's partitions fill the gaps of a large one; the devices take embedding tasks of
any sample, one at a time each; a sample whose partitions are all embedded makes room
for the next
(:mod:`.sample_slots`).  A sample whose files changed since its folder was
written starts afresh (the others still resume).

A sample whose input turns out to be bad while it is read (a malformed record, mates
out of order) fails alone: the other samples finish, the run ends with exit code 1 and
``samples.tsv`` says which sample failed and why.  A fault of the cluster or the models
stops the run; every finished partition is kept for the next one.

Usage::

    sheet = read_samplesheet("samples.csv")
    result = run_samples(settings, sheet)   # settings.out: RUN/; the cluster settings name
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import Client

from virnuc_dask.config import Settings
from virnuc_dask.core.samplesheet import Sample, SampleSheet
from virnuc_dask.dataflow.device_time import devices_busy
from virnuc_dask.dataflow.identity import fingerprint, fingerprint_differences
from virnuc_dask.dataflow.models_on_workers import ModelLoading
from virnuc_dask.dataflow.pipeline import RunResult, predict, preflight
from virnuc_dask.dataflow.run_scores import RUN_TABLE, table_root
from virnuc_dask.dataflow.run_tables import SampleRow, multiqc_tsv, sample_row, samples_tsv
from virnuc_dask.dataflow.sample_slots import SampleSlots
from virnuc_dask.dataflow.session import ProgressFactory, run_session
from virnuc_dask.dataflow.store import EmbeddingStore
from virnuc_dask.dataflow.viral_reads import write_viral_reads
from virnuc_dask.errors import InputFormatError, OutputDirError, SampleSheetError, first_line
from virnuc_dask.events import Progress, ProgressEvent, reporter
from virnuc_dask.files import atomic_write_text
from virnuc_dask.rundir import MULTIQC, RUN_SCORES, SAMPLES, SUMMARY

logger = logging.getLogger(__name__)

#: Samples reading or embedding side by side (each keeps about two partitions per worker
#: in flight); samples left with only their last results to write do not count
#: (:mod:`.sample_slots`).
SAMPLES_IN_FLIGHT = 4
#: Samples in flight at all, those finishing their results included.
SAMPLES_AT_ONCE = 2 * SAMPLES_IN_FLIGHT

#: Errors that belong to one sample's input or output folder: the others go on.
SAMPLE_ERRORS = (InputFormatError, OutputDirError)


class RunStopped(Exception):
    """Raised in a sample's thread when the run it belongs to has ended."""


@dataclasses.dataclass
class SequencingRunResult:
    """What a sequencing run produced: per sample its :class:`RunResult` (None when it
    failed), and the lines of ``samples.tsv``."""

    out: Path
    results: dict[str, RunResult | None]
    rows: list[SampleRow]
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        statuses = {row.status for row in self.rows}
        return 1 if "failed" in statuses else 2 if "partial" in statuses else 0


def sample_settings(settings: Settings, sample: Sample) -> Settings:
    """The settings of one sample: its files, ``RUN/<sample>/`` as output directory."""
    return settings.replace(inputs=sample.inputs, out=str(Path(settings.out) / sample.name))


def check_sheet_for_run(settings: Settings, sheet: SampleSheet) -> None:
    """What a run needs of a sheet beyond the sheet itself: no sample named like a file
    of the run directory, every sample's output folder usable (before any cluster)."""
    for sample in sheet:
        if sample.name in (SAMPLES, MULTIQC, SUMMARY):
            raise SampleSheetError(
                sheet.path,
                sample.line,
                f"sample name {sample.name!r} is the name of a file of the run directory",
            )
        preflight(sample_settings(settings, sample))


def run_samples(
    settings: Settings,
    sheet: SampleSheet,
    *,
    client: Client | None = None,
    progress: ProgressFactory | None = None,
    viral_reads: bool = False,
) -> tuple[SequencingRunResult, str | None]:
    """Check the sheet's samples before any cluster starts, then predict them in the
    run's session (:func:`~virnuc_dask.dataflow.session.run_session`); the result and
    the dashboard link (if any)."""
    settings = settings.replace(inputs=tuple(f for s in sheet for f in s.inputs))
    preflight(settings)  # the classifier, the run directory
    check_sheet_for_run(settings, sheet)
    # The run directory and every sample's folder: a one-sample run into RUN/<sample>
    # started beside this one stops at once, naming this run.
    hold = [settings.out, *(sample_settings(settings, sample).out for sample in sheet)]
    with run_session(settings, client=client, progress=progress, hold=hold) as session:
        result = predict_samples(
            settings,
            session.client,
            sheet=sheet,
            progress=session.progress,
            viral_reads=viral_reads,
        )
    return result, session.dashboard_link


def files_changed(settings: Settings, precision: Callable[[], str]) -> bool:
    """Whether a sample's folder holds the store of a run of other files (the sheet names
    other files, or they changed) and nothing else differs: that sample starts afresh.
    (Other differences, such as other models, are refused as a one-sample run refuses
    them.) ``precision()``: the run's precision (called only where a store exists: it
    may wait for the models)."""
    store = EmbeddingStore(Path(settings.out))
    if settings.overwrite or not store.exists():
        return False
    diffs = set(fingerprint_differences(store.fingerprint, fingerprint(settings, precision())))
    return "inputs" in diffs and diffs <= {"inputs", "rows"}


def shared_scores(settings: Settings, facts: dict[str, Any]) -> dict[str, Any]:
    """``facts`` naming the run's score table (:mod:`.run_scores`) to every sample's
    dataflow: identical inputs across samples are embedded once per run. Not with
    ``dedup`` off, nor where no scores are computed or every embedding is kept."""
    if not settings.dedup or settings.classifier is None or settings.keep_embeddings:
        return facts
    identity = fingerprint(settings.replace(inputs=()), facts["precision"])
    if settings.overwrite:  # everything afresh, the shared scores too
        shutil.rmtree(Path(settings.out) / RUN_SCORES, ignore_errors=True)
    return {**facts, RUN_TABLE: str(table_root(settings.out, identity))}


def predict_samples(
    settings: Settings,
    client: Client,
    *,
    sheet: SampleSheet,
    progress: Progress | None = None,
    viral_reads: bool = False,
) -> SequencingRunResult:
    """Predict every sample of ``sheet`` into ``settings.out``/<sample> on ``client``'s
    cluster, then write the run's tables and summary; ``viral_reads``: also each
    sample's viral reads (:mod:`.viral_reads`)."""
    t0, started = time.perf_counter(), time.time()
    # "samples": finished samples of the sheet, and each sample's status as it changes;
    # each sample's own events carry its name (``sample``).
    tick = reporter(progress)
    out = Path(settings.out)
    check_sheet_for_run(settings, sheet)
    # Once for every sample; the workers load them while the first samples are read.
    loading = ModelLoading(settings, client)
    facts_lock = threading.Lock()
    shared: list[dict[str, Any]] = []

    def facts() -> dict[str, Any]:
        with facts_lock:  # the run's score table named (and with --overwrite cleared) once
            if not shared:
                shared.append(shared_scores(settings, loading.facts()))
            return shared[0]

    logger.info(
        "%d samples, up to %d at a time; the models load while the first are read",
        len(sheet),
        SAMPLES_IN_FLIGHT,
    )

    for sample in sheet:
        tick("samples", 0, len(sheet), sample=sample.name, status="waiting")

    slots = SampleSlots(limit=SAMPLES_IN_FLIGHT)

    stopping = threading.Event()

    def one(sample: Sample) -> tuple[RunResult | None, SampleRow] | None:
        with slots.slot(sample.name, progress) as sample_progress:
            if stopping.is_set():  # the run ended while this sample waited for a slot
                return None

            def guarded(event: ProgressEvent) -> None:
                # Every step of a sample reports here, in the sample's thread: once the
                # run has ended, the next step stops the sample (its finished partitions
                # are kept), also on a cluster the caller keeps running.
                if stopping.is_set():
                    raise RunStopped(f"sample {sample.name}: the run ended")
                sample_progress(event)

            return predict_sample(sample, guarded)

    def predict_sample(sample: Sample, sample_progress: Progress) -> tuple[Any, SampleRow]:
        t = time.perf_counter()
        tick("samples", 0, len(sheet), sample=sample.name, status="running")
        try:
            mine = sample_settings(settings, sample)
            if files_changed(mine, lambda: facts()["precision"]):
                logger.info("sample %s: its files changed, it starts afresh", sample.name)
                mine = mine.replace(overwrite=True)
            result = predict(mine, client, facts=facts, progress=sample_progress)
            if viral_reads:
                write_viral_reads(result.out, sample.inputs)
        except SAMPLE_ERRORS as exc:
            logger.error("sample %s failed: %s", sample.name, first_line(exc))
            return None, SampleRow(
                sample.name,
                "failed",
                sample.kind,
                seconds=time.perf_counter() - t,
                error=first_line(exc),
            )
        seconds = time.perf_counter() - t
        logger.info(
            "sample %s: %s reads, %s viral (%.1f s)",
            sample.name,
            f"{result.counts.reads:,}",
            f"{result.counts.reads_virus:,}",
            seconds,
        )
        taken = sum(e.from_run for e in EmbeddingStore(result.out).entries().values())
        return result, sample_row(sample.name, sample.kind, result.summary, seconds, taken)

    done: dict[str, tuple[RunResult | None, SampleRow]] = {}
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=min(len(sheet), SAMPLES_AT_ONCE), thread_name_prefix="sample"
    )
    futures = {pool.submit(one, sample): sample for sample in sheet}
    try:
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            sample = futures[future]
            done[sample.name] = future.result()
            row = done[sample.name][1]
            tick("samples", n, len(sheet), reads=row.reads, sample=row.sample, status=row.status)
    except BaseException:
        # Interrupted, or an error that ends the run: samples not started are not
        # started, and the run does not wait for those in flight to finish (they stop
        # when the caller closes the cluster; their finished partitions are kept).
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    rows = [done[s.name][1] for s in sheet]
    result = SequencingRunResult(out, {s.name: done[s.name][0] for s in sheet}, rows, summary={})
    result.summary = run_level_summary(
        settings, sheet, result, facts(), loading.seconds, time.perf_counter() - t0
    )
    outs = [Path(sample_settings(settings, s).out) for s in sheet]
    result.summary["workers"] = devices_busy(client, outs, (started, time.time()))
    atomic_write_text(out / SAMPLES, samples_tsv(rows))
    atomic_write_text(out / MULTIQC, multiqc_tsv(rows))
    atomic_write_text(out / SUMMARY, json.dumps(result.summary, indent=2) + "\n")
    return result


def run_level_summary(
    settings: Settings,
    sheet: SampleSheet,
    result: SequencingRunResult,
    facts: dict[str, Any],
    load_seconds: float | None,
    seconds: float,
) -> dict[str, Any]:
    """The content of the run directory's ``run_summary.json``."""
    from virnuc_dask import __version__

    totals = {
        key: sum(getattr(r, key) or 0 for r in result.rows)
        for key in ("reads", "pairs", "chunks", "orfs", "viral_reads", "failed_records")
    }
    return {
        "version": __version__,
        "samplesheet": str(Path(sheet.path).resolve()),
        "exit_code": result.exit_code,
        "samples": [
            {
                **row.as_dict(),
                "viral_fraction": row.viral_fraction,
                "out": str(Path(settings.out) / row.sample),
                "files": list(sample.inputs),
                "partitions_reused": (
                    None
                    if result.results[row.sample] is None
                    else result.results[row.sample].partitions_reused
                ),
                "partitions": (
                    None
                    if result.results[row.sample] is None
                    else result.results[row.sample].partitions
                ),
            }
            for row, sample in zip(result.rows, sheet, strict=True)
        ],
        "totals": totals,
        "models": {
            "esm_model": settings.esm_model,
            "dnabert_model": settings.dnabert_model,
            "classifier": settings.classifier,
            "precision": facts.get("precision"),
            "device": facts.get("device"),
        },
        "length": settings.length,
        "samples_in_flight": min(len(sheet), SAMPLES_IN_FLIGHT),
        "timings": {"load_models": load_seconds, "total": seconds},
    }
