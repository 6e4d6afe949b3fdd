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
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import PRECISIONS, ConfigError, Settings, load_settings
from .errors import VirnucError

logger = logging.getLogger("virnuc_dask")

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2

# Further subcommands, one module each: ``add_parser(subparsers) -> ArgumentParser`` adds
# the command (its parser's ``set_defaults(run=...)`` names ``run(args) -> int``).
EXTRA_COMMANDS: tuple[str, ...] = ()


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument("--debug", action="store_true",
                       help="show tracebacks and debug logging")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", help="more detailed logging")
    group.add_argument("--log-file", metavar="FILE", help="also write the log to FILE")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--length", type=int, help="chunk length in bp (300 or 500 for the "
                        "published classifiers; default from config: 500)")
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
                        ">= 8.0, else fp32)")
    run = parser.add_argument_group("cluster and batching")
    run.add_argument("--workers", type=int, help="workers of a local cluster (default: one "
                     "per GPU, or one CPU worker)")
    run.add_argument("--threads", type=int, help="torch threads per CPU worker")
    run.add_argument("--gpus", metavar="IDS", help="GPU ids to use, e.g. 0,1")
    run.add_argument("--scheduler", metavar="ADDRESS|FILE",
                     help="connect to a running Dask scheduler (tcp://host:8786 or a "
                     "scheduler file) instead of starting a local cluster")
    run.add_argument("--toks-per-batch", type=int, help="ESM-2 token budget per batch")
    run.add_argument("--dnabert-toks-per-batch", type=int,
                     help="DNABERT-S token budget per batch")
    run.add_argument("--partition-rows", type=int,
                     help="ORFs per partition (unit of scheduling and resume)")
    run.add_argument("--blocksize", type=int, help="bytes of FASTA per reading task")
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
    _add_common(predict)

    demo = sub.add_parser(
        "demo", help="run the whole dataflow on an example with demonstration models",
        description="Write an example FASTA and small randomly initialised models in the "
        "real formats (demonstration weights: the calls mean nothing biologically), then "
        "run predict on them. Works offline.")
    demo.add_argument("-o", "--out", metavar="DIR", default="virnuc-demo",
                      help="directory for the example, the models and the results "
                      "(default: virnuc-demo)")
    demo.add_argument("--workers", type=int, help="local CPU workers (default 1)")
    _add_common(demo)

    for name in EXTRA_COMMANDS:
        command = importlib.import_module(f"{__package__}.{name}")
        _add_common(command.add_parser(sub))
    return parser


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not (args.debug or args.verbose):
        for noisy in ("distributed", "bokeh", "tornado"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def settings_from_args(args: argparse.Namespace) -> Settings:
    keys = ("out", "length", "esm_model", "dnabert_model", "classifier", "model_cache",
            "offline", "precision", "workers", "threads", "gpus", "scheduler",
            "toks_per_batch", "dnabert_toks_per_batch", "partition_rows", "blocksize",
            "overwrite")
    overrides = {k: getattr(args, k, None) for k in keys}
    settings = load_settings(inputs=args.inputs, config_file=args.config, overrides=overrides)
    if settings.out is None:
        raise ConfigError("no output directory: pass --out DIR")
    return settings


def run_predict(settings: Settings) -> int:
    from .cluster import open_client
    from .pipeline import predict
    from .progress import TerminalProgress

    with open_client(settings) as client:
        logger.info("dashboard: %s", client.dashboard_link)
        with TerminalProgress() as progress:
            result = predict(settings, client, progress=progress.update)
    c = result.counts
    logger.info("%d reads, %d chunks, %d ORFs; %d reads viral, %d without ORF, %d failed; "
                "%d/%d partitions reused; results in %s", c.reads, c.chunks, c.orfs,
                c.reads_virus, c.reads_no_orf, c.failed, result.partitions_reused,
                result.partitions, result.out)
    if c.failed:
        logger.warning("%d records failed; see %s", c.failed,
                       Path(result.out) / "failed_records.tsv")
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args)
    try:
        if args.command == "predict":
            return run_predict(settings_from_args(args))
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(Path(args.out), workers=args.workers)
        if hasattr(args, "run"):
            return args.run(args)
    except KeyboardInterrupt:
        logger.error("interrupted; finished partitions are kept, re-run the command to resume")
        return 130
    except (VirnucError, ConfigError, OSError, ValueError) as exc:
        if args.debug:
            logger.exception("failed")
        else:
            logger.error("%s", exc)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless --debug
        if args.debug:
            logger.exception("internal error")
        else:
            logger.error("internal error: %s: %s (re-run with --debug for a traceback)",
                         type(exc).__name__, exc)
        return EXIT_FAILED
    parser.error(f"unknown command {args.command}")
    return EXIT_FAILED


def console_main() -> None:
    sys.exit(main())
