"""``virnuc-dask predict INPUT... --out DIR``."""

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
        nargs="+",
        metavar="INPUT",
        help="FASTA or FASTQ file(s), plain or gzip (format from the content)",
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
    add_run_options(parser)
    add_progress(parser)
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.cli.options import verbosity

    return run_settings(
        settings_from_args(args),
        verbosity=verbosity(args),
        progress_interval=args.progress_interval,
    )


def run_settings(
    settings: Settings, *, verbosity: str = "normal", progress_interval: float = 30.0
) -> int:
    """Predict with the live display (or progress log lines) and the end-of-run summary."""
    from virnuc_dask.cli.logs import forward_worker_logs
    from virnuc_dask.cli.progress import TerminalProgress
    from virnuc_dask.dataflow.run import run_prediction
    from virnuc_dask.dataflow.summary_text import summary_text

    def display(cluster):
        forward_worker_logs(cluster.client, verbosity)
        return TerminalProgress(
            client=cluster.client,
            interval=progress_interval,
            cluster_status=cluster.status_lines,
            enabled=False if verbosity == "quiet" else None,
        )

    result, _ = run_prediction(settings, progress=display)
    logger.info("run summary (%s):\n%s", Path(result.out) / SUMMARY, summary_text(result.summary))
    if result.counts.failed:
        logger.warning("%d records failed; see %s", result.counts.failed, Path(result.out) / FAILED)
    return result.exit_code
