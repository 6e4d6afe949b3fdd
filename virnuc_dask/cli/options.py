"""Option groups shared by several commands, declared once."""

from __future__ import annotations

import argparse

from virnuc_dask.config import (
    CLUSTERS,
    COMPILE,
    DEVICES,
    PRECISIONS,
    WORKER_TYPES,
    ConfigError,
    Settings,
    load_settings,
)

# The settings a run's flags may override (names of ``Settings`` fields).
RUN_SETTINGS = (
    "out",
    "length",
    "esm_model",
    "dnabert_model",
    "classifier",
    "model_cache",
    "offline",
    "precision",
    "compile",
    "device",
    "workers",
    "threads",
    "gpus",
    "scheduler",
    "scheduler_file",
    "cluster",
    "jobs",
    "cluster_config",
    "worker_type",
    "job_processes",
    "job_cores",
    "job_memory",
    "job_replacements",
    "start_timeout",
    "no_worker_timeout",
    "stuck_after",
    "dashboard_address",
    "performance_report",
    "toks_per_batch",
    "dnabert_toks_per_batch",
    "partition_rows",
    "blocksize",
    "dedup",
    "keep_embeddings",
    "embeddings_dtype",
    "overwrite",
)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def memory_size(text: str) -> str:
    from dask.utils import parse_bytes

    try:
        parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an amount of memory such as 16GiB, got {text!r}"
        ) from None
    return text


def add_job_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--worker-type`` and the batch job size, for ``predict`` and ``job-script``."""
    parser.add_argument(
        "--worker-type",
        choices=WORKER_TYPES,
        help="workers of --cluster slurm|pbs|slurm-runner: gpu (default; "
        "dask-cuda workers, one per GPU, GPUs requested) or cpu (plain Dask "
        "workers, no GPU request)",
    )
    parser.add_argument(
        "--job-processes",
        type=positive_int,
        metavar="N",
        help="worker processes per batch job (gpu: GPUs per job); default "
        "from --cluster-config or the worker type (1)",
    )
    parser.add_argument(
        "--job-cores",
        type=positive_int,
        metavar="N",
        help="CPUs per batch job; default from --cluster-config or the worker type (gpu 8, cpu 2)",
    )
    parser.add_argument(
        "--job-memory",
        type=memory_size,
        metavar="SIZE",
        help="host memory per batch job, e.g. 16GiB; default from "
        "--cluster-config or the worker type (gpu 32GiB, cpu 4GiB)",
    )


def add_logging(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", help="more detailed logging")
    group.add_argument(
        "--log-file",
        metavar="FILE",
        help="also write the log to FILE (at least the normal messages, also with --quiet)",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress-interval",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (batch jobs, CI), log a progress "
        "line every SECONDS (default 30); on a terminal a live display is shown",
    )


def add_length(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--length",
        type=int,
        metavar="BP",
        help="chunk length in bp (300 or "
        "500 for the published classifiers; default from config: 500)",
    )


def add_precision(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, what: str = "embedding precision"
) -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help=f"{what} (auto: bf16-mixed on GPUs with compute capability >= 8.0 (bf16 "
        "matrix products, the rest fp32), fp16 on 7.x, else fp32; resolved once for all "
        "workers, the least capable wins)",
    )


def add_config(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file of settings (keys as in configs/default.yaml)"
    )


def add_embedding_models(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--esm-model",
        metavar="NAME|PATH",
        help="fair-esm hub name or local .pt (default esm2_t36_3B_UR50D)",
    )
    parser.add_argument(
        "--dnabert-model",
        metavar="ID|DIR",
        help="hub id or local directory (default zhihan1996/DNABERT-S)",
    )
    parser.add_argument("--model-cache", metavar="DIR", help="directory for downloaded model files")


def add_batching(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--toks-per-batch",
        type=int,
        metavar="N",
        help="ESM-2 token budget per batch (default: from free GPU memory, 2048 on CPU)",
    )
    parser.add_argument(
        "--dnabert-toks-per-batch",
        type=int,
        metavar="N",
        help="DNABERT-S token budget per batch (default: from free GPU memory, 4096 on CPU)",
    )
    parser.add_argument(
        "--partition-rows",
        type=int,
        metavar="N",
        help="ORFs per partition (unit of scheduling and resume; default from config)",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Models, precision, cluster and batching: everything a run of the dataflow takes."""
    models = parser.add_argument_group("models")
    add_length(models)
    add_embedding_models(models)
    models.add_argument(
        "--classifier",
        metavar="PATH",
        help="VirNucPro classifier file (300_model.pth / 500_model.pth)",
    )
    models.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never download; load models from local files and caches only",
    )
    add_precision(models)
    models.add_argument(
        "--compile",
        choices=COMPILE,
        help="compile the models' layers with torch.compile (auto: on for CPU and CUDA; "
        "the first run compiles, later runs load the cached kernels; default auto)",
    )
    models.add_argument(
        "--device",
        choices=DEVICES,
        help="where workers embed: auto (the GPU a worker was started for, "
        "an error if it cannot use it), cuda, or cpu (default auto)",
    )
    run = parser.add_argument_group("cluster and batching")
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="workers of a local cluster (default: one per GPU, or one CPU worker)",
    )
    run.add_argument("--threads", type=int, metavar="N", help="torch threads per CPU worker")
    run.add_argument("--gpus", metavar="IDS", help="GPU ids to use, e.g. 0,1")
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS|FILE",
        help="connect to a running Dask scheduler (tcp://host:8786 or a "
        "scheduler file) instead of starting a local cluster",
    )
    run.add_argument(
        "--scheduler-file",
        metavar="FILE",
        help="connect to the scheduler that wrote FILE (dask scheduler "
        "--scheduler-file FILE); waits for the file to appear",
    )
    run.add_argument(
        "--cluster",
        choices=CLUSTERS,
        help="cluster to start: local (default), slurm or pbs (dask-jobqueue "
        "batch jobs, see --worker-type), slurm-runner (ranks of one srun, see "
        "cluster/slurm-batch.sh)",
    )
    run.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="batch jobs to keep running for "
        "--cluster slurm|pbs (default 1); jobs that end are replaced",
    )
    run.add_argument(
        "--cluster-config",
        metavar="FILE",
        help="YAML in dask-jobqueue's layout (jobqueue: slurm: ...) overriding "
        "the packaged cluster/jobqueue.yaml",
    )
    add_job_options(run)
    run.add_argument(
        "--job-replacements",
        type=int,
        metavar="N",
        help="at most N batch jobs are submitted to replace jobs that ended "
        "(walltime, preemption, scancel); default 8",
    )
    run.add_argument(
        "--start-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="stop when batch jobs stay pending this long with no worker "
        "connected (default: wait as long as the queue takes)",
    )
    run.add_argument(
        "--no-worker-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="stop after this long without any connected worker: a --scheduler "
        "without workers, a running job whose worker does not connect "
        "(default 300)",
    )
    run.add_argument(
        "--stuck-after",
        type=positive_seconds,
        metavar="SECONDS",
        help="a worker whose device makes no progress this long (or 20x its slowest "
        "recent batch, if longer) is closed and its partitions go to the other "
        "workers (default 300)",
    )
    run.add_argument(
        "--dashboard-address",
        metavar="HOST:PORT",
        help="where the dashboard of a cluster started here listens (default "
        "localhost:8787: only on the scheduler's machine, reached with ssh -L as the "
        "log says; :8787 for every interface)",
    )
    run.add_argument(
        "--performance-report",
        metavar="FILE.html",
        help="save Dask's performance report of the run (task stream, worker "
        "profiles, bandwidth) to FILE.html",
    )
    add_batching(run)
    run.add_argument(
        "--blocksize", type=int, metavar="BYTES", help="bytes of FASTA or FASTQ per reading task"
    )
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
