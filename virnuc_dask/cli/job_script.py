"""``virnuc-dask job-script slurm|pbs``: the batch script one job would run."""

from __future__ import annotations

import argparse

from virnuc_dask.cli.options import add_job_options, add_logging
from virnuc_dask.config import JOBQUEUE_SYSTEMS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "job-script",
        help="print the batch script of one --cluster slurm|pbs job",
        description="Print the script one batch job of `predict --cluster SYSTEM` would "
        "submit, from the worker type's profile, the packaged defaults, Dask's config, "
        "--cluster-config and the --job-* flags; nothing is submitted.",
    )
    parser.add_argument("system", choices=JOBQUEUE_SYSTEMS, help="the batch system")
    parser.add_argument(
        "--cluster-config",
        metavar="FILE",
        help="YAML in dask-jobqueue's layout overriding the defaults",
    )
    add_job_options(parser)
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.cluster.jobqueue import job_script

    print(
        job_script(
            args.system,
            config_file=args.cluster_config,
            worker_type=args.worker_type,
            processes=args.job_processes,
            cores=args.job_cores,
            memory=args.job_memory,
        )
    )
    return 0
