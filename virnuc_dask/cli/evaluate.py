"""``virnuc-dask evaluate --viral FILE... --other FILE... --classifier M.pth --out DIR``."""

from __future__ import annotations

import argparse
import logging

from virnuc_dask.cli.options import add_logging, add_progress, add_run_options
from virnuc_dask.cli.train import add_labelled_inputs
from virnuc_dask.errors import ConfigError

logger = logging.getLogger("virnuc_dask")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure a classifier on labelled viral and other sequences",
        description="Predict the --viral and the --other files with --classifier (into "
        "DIR/viral and DIR/other, the usual result files) and report accuracy, precision, "
        "recall, F1, ROC AUC and the confusion matrix at ORF, chunk and read level, as text "
        "(evaluation.txt, also logged) and JSON (evaluation.json). Re-running the same "
        "command resumes. Exit 0 complete, 2 some records failed, 1 failed.",
    )
    add_labelled_inputs(parser)
    parser.add_argument("-o", "--out", metavar="DIR", help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="start afresh instead of resuming an evaluation in --out",
    )
    add_run_options(parser)
    add_progress(parser)
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import os

    from virnuc_dask.cli.options import settings_from_args, verbosity
    from virnuc_dask.cli.progress import display_factory
    from virnuc_dask.rundir import EVALUATION
    from virnuc_dask.train.evaluate import metrics_text, run_evaluation

    if args.classifier is None:
        raise ConfigError("no classifier given: pass --classifier model.pth")
    viral = tuple(os.path.abspath(p) for p in args.viral)
    other = tuple(os.path.abspath(p) for p in args.other)
    args.inputs = [*viral, *other]
    settings = settings_from_args(args)
    display = display_factory(verbosity(args), args.progress_interval)

    result = run_evaluation(settings, viral, other, progress=display)
    logger.info(
        "evaluation of %s (%s):\n%s",
        settings.classifier,
        result.out / EVALUATION,
        metrics_text(result.metrics),
    )
    return result.exit_code
