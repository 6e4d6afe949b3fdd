"""Option groups shared by several commands, declared once."""

from __future__ import annotations

import argparse

from virnuc_dask.config import (
    CLUSTERS,
    DEVICES,
    PRECISIONS,
    ConfigError,
    Settings,
    load_settings,
)

# The settings a run's flags may override (names of ``Settings`` fields).
RUN_SETTINGS = ("out", "length", "esm_model", "dnabert_model", "classifier", "model_cache",
                "offline", "precision", "device", "workers", "threads", "gpus", "scheduler",
                "scheduler_file", "cluster", "jobs", "cluster_config", "performance_report",
                "toks_per_batch", "dnabert_toks_per_batch", "partition_rows", "blocksize",
                "dedup", "overwrite")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def add_logging(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument("--debug", action="store_true",
                       help="show tracebacks and debug logging")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", help="more detailed logging")
    group.add_argument("--log-file", metavar="FILE", help="also write the log to FILE (at "
                       "least the normal messages, also with --quiet)")


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-interval", type=positive_seconds, default=30.0,
                        metavar="SECONDS",
                        help="when stderr is not a terminal (batch jobs, CI), log a progress "
                        "line every SECONDS (default 30); on a terminal a live display is shown")


def add_length(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--length", type=int, metavar="BP", help="chunk length in bp (300 or "
                        "500 for the published classifiers; default from config: 500)")


def add_precision(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                  what: str = "embedding precision") -> None:
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"{what} (auto: bf16 on GPUs with compute capability >= 8.0, "
                        "fp16 on 7.x, else fp32)")


def add_config(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings "
                        "(keys as in configs/default.yaml)")


def add_embedding_models(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--esm-model", metavar="NAME|PATH",
                        help="fair-esm hub name or local .pt (default esm2_t36_3B_UR50D)")
    parser.add_argument("--dnabert-model", metavar="ID|DIR",
                        help="hub id or local directory (default zhihan1996/DNABERT-S)")
    parser.add_argument("--model-cache", metavar="DIR",
                        help="directory for downloaded model files")


def add_batching(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--toks-per-batch", type=int, metavar="N", help="ESM-2 token budget "
                        "per batch (default: from free GPU memory, 2048 on CPU)")
    parser.add_argument("--dnabert-toks-per-batch", type=int, metavar="N",
                        help="DNABERT-S token budget per batch (default: from free GPU "
                        "memory, 4096 on CPU)")
    parser.add_argument("--partition-rows", type=int, metavar="N",
                        help="ORFs per partition (unit of scheduling and resume; default "
                        "from config)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Models, precision, cluster and batching: everything a run of the dataflow takes."""
    models = parser.add_argument_group("models")
    add_length(models)
    add_embedding_models(models)
    models.add_argument("--classifier", metavar="PATH",
                        help="VirNucPro classifier file (300_model.pth / 500_model.pth)")
    models.add_argument("--offline", action="store_true", default=None,
                        help="never download; load models from local files and caches only")
    add_precision(models)
    models.add_argument("--device", choices=DEVICES,
                        help="where workers embed: auto (the GPU a worker was started for, "
                        "an error if it cannot use it), cuda, or cpu (default auto)")
    run = parser.add_argument_group("cluster and batching")
    run.add_argument("--workers", type=int, metavar="N", help="workers of a local cluster "
                     "(default: one per GPU, or one CPU worker)")
    run.add_argument("--threads", type=int, metavar="N", help="torch threads per CPU worker")
    run.add_argument("--gpus", metavar="IDS", help="GPU ids to use, e.g. 0,1")
    run.add_argument("--scheduler", metavar="ADDRESS|FILE",
                     help="connect to a running Dask scheduler (tcp://host:8786 or a "
                     "scheduler file) instead of starting a local cluster")
    run.add_argument("--scheduler-file", metavar="FILE",
                     help="connect to the scheduler that wrote FILE (dask scheduler "
                     "--scheduler-file FILE); waits for the file to appear")
    run.add_argument("--cluster", choices=CLUSTERS,
                     help="cluster to start: local (default), slurm or pbs (dask-jobqueue "
                     "jobs of dask-cuda GPU workers), slurm-runner (ranks of one srun, see "
                     "cluster/slurm-batch.sh)")
    run.add_argument("--jobs", type=int, metavar="N", help="batch jobs to submit for --cluster "
                     "slurm|pbs (default 1; each job runs one worker per GPU)")
    run.add_argument("--cluster-config", metavar="FILE",
                     help="YAML in dask-jobqueue's layout (jobqueue: slurm: ...) overriding "
                     "the packaged cluster/jobqueue.yaml")
    run.add_argument("--performance-report", metavar="FILE.html",
                     help="save Dask's performance report of the run (task stream, worker "
                     "profiles, bandwidth) to FILE.html")
    add_batching(run)
    run.add_argument("--blocksize", type=int, metavar="BYTES",
                     help="bytes of FASTA or FASTQ per reading task")
    add_config(run)


def verbosity(args: argparse.Namespace) -> str:
    """``debug`` > ``quiet`` > ``verbose`` > ``normal``, from the logging flags."""
    if args.debug:
        return "debug"
    if args.quiet:
        return "quiet"
    return "verbose" if args.verbose else "normal"


def settings_from_args(args: argparse.Namespace, *, require_out: bool = True) -> Settings:
    """The run's ``Settings``: packaged defaults, then ``--config``, then the flags."""
    overrides = {k: getattr(args, k, None) for k in RUN_SETTINGS}
    settings = load_settings(inputs=args.inputs, config_file=args.config, overrides=overrides)
    if require_out and settings.out is None:
        raise ConfigError("no output directory: pass --out DIR")
    # Workers started elsewhere (by hand, in batch jobs) have another working directory.
    return settings.with_absolute_paths()
