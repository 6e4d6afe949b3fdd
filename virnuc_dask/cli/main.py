"""Command line: ``virnuc-dask predict | demo``.

``main(argv) -> int`` does the work and returns the exit code (0 complete,
2 partial: some records failed and are listed, 1 failed); ``console_main`` is
the console entry point. Expected failures print one line on stderr; a
traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from virnuc_dask import __version__
from virnuc_dask.config import CLUSTERS, PRECISIONS, ConfigError, Settings, load_settings
from virnuc_dask.errors import VirnucError

logger = logging.getLogger("virnuc_dask")

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2

# Further subcommands, one module each: ``add_parser(subparsers) -> ArgumentParser`` adds
# the command (its parser's ``set_defaults(run=...)`` names ``run(args) -> int``).
EXTRA_COMMANDS: tuple[str, ...] = (
    "tools.validate", "tools.report", "tools.staging", "cluster.start", "tools.bench",
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument("--debug", action="store_true",
                       help="show tracebacks and debug logging")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", help="more detailed logging")
    group.add_argument("--log-file", metavar="FILE", help="also write the log to FILE (at "
                       "least the normal messages, also with --quiet)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-interval", type=_seconds, default=30.0, metavar="SECONDS",
                        help="when stderr is not a terminal (batch jobs, CI), log a progress "
                        "line every SECONDS (default 30); on a terminal a live display is shown")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--length", type=int, metavar="BP", help="chunk length in bp (300 or "
                        "500 for the published classifiers; default from config: 500)")
    models.add_argument("--esm-model", metavar="NAME|PATH",
                        help="fair-esm hub name or local .pt (default esm2_t36_3B_UR50D)")
    models.add_argument("--dnabert-model", metavar="ID|DIR",
                        help="hub id or local directory (default zhihan1996/DNABERT-S)")
    models.add_argument("--classifier", metavar="PATH",
                        help="VirNucPro classifier file (300_model.pth / 500_model.pth)")
    models.add_argument("--model-cache", metavar="DIR",
                        help="directory for downloaded model files")
    models.add_argument("--offline", action="store_true", default=None,
                        help="never download; load models from local files and caches only")
    models.add_argument("--precision", choices=PRECISIONS,
                        help="embedding precision (auto: bf16 on GPUs with compute capability "
                        ">= 8.0, fp16 on 7.x, else fp32)")
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
    run.add_argument("--toks-per-batch", type=int, metavar="N", help="ESM-2 token budget per batch "
                     "(default: from free GPU memory, 2048 on CPU)")
    run.add_argument("--dnabert-toks-per-batch", type=int, metavar="N",
                     help="DNABERT-S token budget per batch (default: from free GPU memory, "
                     "4096 on CPU)")
    run.add_argument("--partition-rows", type=int, metavar="N",
                     help="ORFs per partition (unit of scheduling and resume)")
    run.add_argument("--blocksize", type=int, metavar="BYTES",
                     help="bytes of FASTA per reading task")
    run.add_argument("--config", metavar="FILE", help="YAML file of settings "
                     "(keys as in configs/default.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virnuc-dask",
        description="Identify viral reads (VirNucPro: six-frame ORFs, DNABERT-S + ESM-2 "
        "embeddings, MLP classifier) on every GPU of a node or an HPC allocation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = sub.add_parser(
        "predict", help="predict viral reads in FASTA files",
        description="Chunk, translate, embed and classify the reads of INPUT files; write "
        "prediction_results.txt, prediction_results_highestscore.csv, read_predictions.tsv, "
        "embeddings.zarr, failed_records.tsv and run_summary.json into --out. Re-running the "
        "same command resumes an interrupted run. Exit 0 complete, 2 some records failed, "
        "1 failed.")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="FASTA file(s), plain or gzip")
    predict.add_argument("-o", "--out", metavar="DIR", help="output directory")
    predict.add_argument("--overwrite", action="store_true", default=None,
                         help="start afresh instead of resuming a run in --out")
    _add_run_options(predict)
    _add_progress(predict)
    _add_common(predict)

    demo = sub.add_parser(
        "demo", help="run the whole dataflow on an example with demonstration models",
        description="Write an example FASTA and small randomly initialised models in the "
        "real formats (demonstration weights: the calls mean nothing biologically), then "
        "run predict on them. Works offline.")
    demo.add_argument("-o", "--out", metavar="DIR", default="virnuc-demo",
                      help="directory for the example, the models and the results "
                      "(default: virnuc-demo)")
    demo.add_argument("--workers", type=int, metavar="N", help="local CPU workers (default 1)")
    _add_progress(demo)
    _add_common(demo)

    for name in EXTRA_COMMANDS:
        command = importlib.import_module(f"virnuc_dask.{name}")
        _add_common(command.add_parser(sub))
    return parser


def verbosity(args: argparse.Namespace) -> str:
    """``debug`` > ``quiet`` > ``verbose`` > ``normal``, from the logging flags."""
    if args.debug:
        return "debug"
    if args.quiet:
        return "quiet"
    return "verbose" if args.verbose else "normal"


def setup_logging(args: argparse.Namespace) -> None:
    from virnuc_dask.cli.logs import configure

    configure(verbosity(args), args.log_file)


def settings_from_args(args: argparse.Namespace) -> Settings:
    keys = ("out", "length", "esm_model", "dnabert_model", "classifier", "model_cache",
            "offline", "precision", "workers", "threads", "gpus", "scheduler",
            "scheduler_file", "cluster", "jobs", "cluster_config", "performance_report",
            "toks_per_batch", "dnabert_toks_per_batch", "partition_rows", "blocksize",
            "overwrite")
    overrides = {k: getattr(args, k, None) for k in keys}
    settings = load_settings(inputs=args.inputs, config_file=args.config, overrides=overrides)
    if settings.out is None:
        raise ConfigError("no output directory: pass --out DIR")
    # Workers started elsewhere (by hand, in batch jobs) have another working directory.
    return settings.with_absolute_paths()


def run_predict(settings: Settings, *, verbosity: str = "normal",
                progress_interval: float = 30.0) -> int:
    from virnuc_dask.cli.logs import forward_worker_logs
    from virnuc_dask.cli.progress import TerminalProgress
    from virnuc_dask.cluster.start import open_client
    from virnuc_dask.dataflow.dashboard import dashboard_link, performance_report
    from virnuc_dask.dataflow.pipeline import predict, preflight
    from virnuc_dask.tools.report import summary_text

    preflight(settings)  # bad inputs fail here, before any cluster starts
    with open_client(settings) as client:
        forward_worker_logs(client, verbosity)
        logger.info("dashboard: %s", dashboard_link(client)
                    or "none (the scheduler runs without one; it needs bokeh)")
        with performance_report(settings.performance_report), \
                TerminalProgress(client=client, interval=progress_interval,
                                 enabled=False if verbosity == "quiet" else None) as progress:
            result = predict(settings, client, progress=progress)
    logger.info("run summary (%s):\n%s", Path(result.out) / "run_summary.json",
                summary_text(result.summary))
    if result.counts.failed:
        logger.warning("%d records failed; see %s", result.counts.failed,
                       Path(result.out) / "failed_records.tsv")
    return result.exit_code


def error_message(exc: BaseException) -> str:
    """One line for an expected failure, whether raised here or on a worker."""
    if type(exc).__name__ == "KilledWorker":  # distributed: a task kept killing its workers
        return ("workers died repeatedly while running one task (out of host memory, or a "
                "crash in native code); see the worker logs, or try smaller --partition-rows")
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split("\n"))


class Terminated(BaseException):
    """SIGTERM (a batch system ending the job, ``kill``): stop like Ctrl-C, exit 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        setup_logging(args)
    except OSError as exc:
        print(f"virnuc-dask: cannot write the log file: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.command == "predict":
            return run_predict(settings_from_args(args), verbosity=verbosity(args),
                               progress_interval=args.progress_interval)
        if args.command == "demo":
            from virnuc_dask.tools.demo import run_demo
            return run_demo(Path(args.out), workers=args.workers, verbosity=verbosity(args),
                            progress_interval=args.progress_interval)
        if hasattr(args, "run"):
            return args.run(args)
    except (KeyboardInterrupt, Terminated) as exc:
        logger.error("interrupted%s; finished partitions are kept, re-run the command to "
                     "resume", " (SIGTERM)" if isinstance(exc, Terminated) else "")
        return 143 if isinstance(exc, Terminated) else 130
    except (VirnucError, ConfigError, OSError, ValueError) as exc:
        if args.debug:
            logger.exception("failed")
        else:
            logger.error("%s", error_message(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless --debug
        if args.debug:
            logger.exception("internal error")
        elif type(exc).__name__ == "KilledWorker":
            logger.error("%s", error_message(exc))
        else:
            logger.error("internal error: %s: %s (re-run with --debug for a traceback)",
                         type(exc).__name__, error_message(exc))
        return EXIT_FAILED
    parser.error(f"unknown command {args.command}")
    return EXIT_FAILED


def console_main() -> None:
    sys.exit(main())
