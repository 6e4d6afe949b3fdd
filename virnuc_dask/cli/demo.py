"""``virnuc-dask demo``: the whole dataflow on an example with demonstration models."""

from __future__ import annotations

import argparse
from pathlib import Path

from virnuc_dask.cli.options import add_logging, add_progress, verbosity


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole dataflow on an example with demonstration models",
        description="Write an example FASTA and small randomly initialised models in the "
        "real formats (demonstration weights: the calls mean nothing biologically), then "
        "run predict on them. Works offline.",
    )
    parser.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        default="virnuc-demo",
        help="directory for the example, the models and the results (default: virnuc-demo)",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="local CPU workers (default 1)")
    add_progress(parser)
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.cli.predict import run_settings
    from virnuc_dask.models.demo import demo_settings

    settings = demo_settings(Path(args.out), workers=args.workers)
    return run_settings(
        settings, verbosity=verbosity(args), progress_interval=args.progress_interval
    )
