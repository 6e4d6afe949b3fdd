"""``virnuc-dask predict INPUT... --out DIR`` and ``predict --samplesheet CSV --out RUN``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from virnuc_dask.cli.options import add_logging, add_progress, add_run_options, settings_from_args
from virnuc_dask.config import EMBEDDINGS_DTYPES, Settings
from virnuc_dask.rundir import FAILED, SUMMARY

logger = logging.getLogger("virnuc_dask")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="predict viral reads in FASTA or FASTQ files",
        description="Chunk, translate, embed and classify the reads of INPUT files; write "
        "prediction_results.txt, prediction_results_highestscore.csv, read_predictions.tsv, "
        "embeddings.zarr, failed_records.tsv and run_summary.json into --out. Re-running the "
        "same command resumes an interrupted run. Exit 0 complete, 2 some records failed, "
        "1 failed.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="FASTA or FASTQ file(s), plain or gzip (format from the content); two mate "
        "files one after the other (R1 R2) are paired reads",
    )
    parser.add_argument(
        "--samplesheet",
        metavar="CSV",
        help="a sequencing run: the samples of an nf-core style sheet "
        "(sample,fastq_1,fastq_2[,fasta]) on one cluster, one output folder per sample "
        "under --out, with samples.tsv and a MultiQC table; instead of INPUT files",
    )
    parser.add_argument("-o", "--out", metavar="DIR", help="output directory")
    parser.add_argument(
        "--no-dedup",
        dest="dedup",
        action="store_false",
        default=None,
        help="embed every ORF, also inputs already seen in this run (identical "
        "inputs are otherwise embedded once)",
    )
    parser.add_argument(
        "--keep-embeddings",
        action="store_true",
        default=None,
        help="keep every ORF's DNABERT-S and ESM-2 embeddings in embeddings.zarr "
        "(about 13 KB per ORF with the published models); by default only ids, "
        "scores and failed records are stored",
    )
    parser.add_argument(
        "--embeddings-dtype",
        choices=EMBEDDINGS_DTYPES,
        help="dtype of kept embeddings (default float32)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="start afresh instead of resuming a run in --out",
    )
    parser.add_argument(
        "--write-viral-reads",
        action="store_true",
        help="also write the input records of the reads predicted virus into "
        "viral_reads.fastq.gz (viral_reads.fasta.gz for FASTA input), both mates of a "
        "pair when either is viral",
    )
    add_run_options(parser)
    add_progress(parser)
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.cli.options import verbosity
    from virnuc_dask.config import ConfigError

    if bool(args.inputs) == bool(args.samplesheet):
        raise ConfigError("give INPUT files or --samplesheet CSV (one of the two)")
    if args.samplesheet:
        return run_samplesheet(
            args.samplesheet,
            settings_from_args(args),
            verbosity(args),
            viral_reads=args.write_viral_reads,
            progress_interval=args.progress_interval,
        )
    return run_settings(
        settings_from_args(args),
        verbosity=verbosity(args),
        progress_interval=args.progress_interval,
        viral_reads=args.write_viral_reads,
    )


def run_settings(
    settings: Settings,
    *,
    verbosity: str = "normal",
    progress_interval: float = 30.0,
    viral_reads: bool = False,
) -> int:
    """Predict with the live display (or progress log lines) and the end-of-run summary."""
    from virnuc_dask.cli.progress import display_factory
    from virnuc_dask.dataflow.run import run_prediction
    from virnuc_dask.dataflow.summary_text import summary_text

    result, _ = run_prediction(settings, progress=display_factory(verbosity, progress_interval))
    if viral_reads:
        from virnuc_dask.dataflow.viral_reads import write_viral_reads

        written = write_viral_reads(result.out, settings.inputs)
        logger.info("%d viral reads written", written["records"])
    logger.info("run summary (%s):\n%s", Path(result.out) / SUMMARY, summary_text(result.summary))
    if result.counts.failed:
        logger.warning("%d records failed; see %s", result.counts.failed, Path(result.out) / FAILED)
    return result.exit_code


def run_samplesheet(
    sheet_path: str,
    settings: Settings,
    verbosity: str = "normal",
    *,
    viral_reads: bool = False,
    progress_interval: float = 30.0,
) -> int:
    """Predict every sample of a sheet on one cluster, with a live line per sample (or
    progress log lines)."""
    from virnuc_dask.cli.sample_progress import sheet_display_factory
    from virnuc_dask.core.samplesheet import read_samplesheet
    from virnuc_dask.dataflow.sequencing_run import run_samples
    from virnuc_dask.rundir import SAMPLES

    sheet = read_samplesheet(sheet_path)  # a bad sheet stops here, before any cluster
    display = sheet_display_factory(verbosity, progress_interval)
    result, _ = run_samples(settings, sheet, progress=display, viral_reads=viral_reads)
    logger.info("%d samples: see %s", len(sheet), Path(result.out) / SAMPLES)
    for row in result.rows:
        if row.status == "failed":
            logger.error("sample %s failed: %s", row.sample, row.error)
        elif row.status == "partial":
            logger.warning(
                "sample %s: %d records failed; see %s",
                row.sample,
                row.failed_records,
                Path(result.out) / row.sample / FAILED,
            )
    return result.exit_code
