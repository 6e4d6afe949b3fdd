"""``virnuc-dask job-script slurm|pbs``: the batch script one job would run."""

from __future__ import annotations

import argparse

from virnuc_dask.cli.options import add_logging
from virnuc_dask.config import JOBQUEUE_SYSTEMS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "job-script", help="print the batch script of one --cluster slurm|pbs job",
        description="Print the script one batch job of `predict --cluster SYSTEM` would "
        "run, from the packaged defaults, Dask's config and --cluster-config; nothing is "
        "submitted.")
    parser.add_argument("system", choices=JOBQUEUE_SYSTEMS)
    parser.add_argument("--cluster-config", metavar="FILE",
                        help="YAML in dask-jobqueue's layout overriding the defaults")
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.cluster.start import job_script

    print(job_script(args.system, config_file=args.cluster_config))
    return 0
