"""``virnuc-dask train --viral FILE... --other FILE... --out DIR``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from virnuc_dask.cli.options import add_logging, add_progress, add_run_options, positive_int
from virnuc_dask.errors import ConfigError
from virnuc_dask.train.options import TrainOptions

logger = logging.getLogger("virnuc_dask")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def add_labelled_inputs(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("labelled inputs")
    group.add_argument(
        "--viral",
        nargs="+",
        required=True,
        metavar="FILE",
        help="FASTA file(s) of viral sequences (label 1), plain or gzip",
    )
    group.add_argument(
        "--other",
        nargs="+",
        required=True,
        metavar="FILE",
        help="FASTA file(s) of non-viral sequences (label 0), plain or gzip",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = TrainOptions()
    parser = subparsers.add_parser(
        "train",
        help="train a classifier on labelled viral and other sequences",
        description="Chunk the --viral and --other sequences, keep their ORFs as the "
        "original selects training data (chunks with ambiguous bases dropped; with "
        "--protein-reference only frames found in a reference protein), embed them with "
        "DNABERT-S and ESM-2 through the prediction dataflow, and train the MLP on batches "
        "streamed from the store. Writes model.pth (loadable by predict --classifier and "
        "by the original prediction.py), training_log.tsv, training_summary.json and "
        "embeddings.zarr into --out. Re-running the same command resumes: finished "
        "embedding partitions and epochs are kept. Defaults are the original train.py's.",
    )
    add_labelled_inputs(parser)
    parser.add_argument(
        "--protein-reference",
        nargs="+",
        metavar="FAA",
        help="FASTA file(s) of reference proteins (e.g. RefSeq .faa): keep "
        "only frames whose protein is part of one of them (default: keep "
        "every stop-free frame)",
    )
    parser.add_argument("-o", "--out", metavar="DIR", help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="start afresh instead of resuming a training in --out",
    )
    hyper = parser.add_argument_group("training")
    hyper.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"seed of the validation split, the shuffle, the initial weights "
        f"and dropout (default {d.seed})",
    )
    hyper.add_argument(
        "--epochs", type=positive_int, default=d.epochs, help=f"most epochs (default {d.epochs})"
    )
    hyper.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.batch_size,
        help=f"training batch size (default {d.batch_size})",
    )
    hyper.add_argument(
        "--lr", type=_positive_float, default=d.lr, help=f"SGD learning rate (default {d.lr})"
    )
    hyper.add_argument(
        "--momentum", type=float, default=d.momentum, help=f"SGD momentum (default {d.momentum})"
    )
    hyper.add_argument(
        "--lr-step",
        type=positive_int,
        default=d.step_size,
        help=f"epochs between learning-rate decays (default {d.step_size})",
    )
    hyper.add_argument(
        "--lr-gamma",
        type=_positive_float,
        default=d.gamma,
        help=f"learning-rate decay factor (default {d.gamma})",
    )
    hyper.add_argument(
        "--patience",
        type=positive_int,
        default=d.patience,
        help=f"stop after this many epochs without a lower validation loss (default {d.patience})",
    )
    hyper.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=d.validation,
        help=f"fraction of the ORFs held out for validation (default {d.validation})",
    )
    hyper.add_argument(
        "--hidden",
        type=positive_int,
        default=d.hidden,
        help=f"hidden units of the MLP (default {d.hidden})",
    )
    hyper.add_argument(
        "--shuffle-window",
        type=positive_int,
        default=d.shuffle_window,
        help="store chunks shuffled together per window (memory: window x "
        f"--partition-rows rows; default {d.shuffle_window})",
    )
    add_run_options(parser)
    add_progress(parser)
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    try:
        return TrainOptions(
            seed=args.seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            step_size=args.lr_step,
            gamma=args.lr_gamma,
            patience=args.patience,
            validation=args.validation_fraction,
            hidden=args.hidden,
            shuffle_window=args.shuffle_window,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.cli.options import settings_from_args, verbosity
    from virnuc_dask.cli.progress import display_factory
    from virnuc_dask.rundir import TRAINING_LOG, TRAINING_SUMMARY
    from virnuc_dask.train.inputs import train_inputs
    from virnuc_dask.train.run import run_training

    if args.classifier is not None:
        raise ConfigError(
            "train writes a classifier (model.pth in --out); --classifier is "
            "an option of predict and evaluate"
        )
    options = options_from_args(args)
    inputs = train_inputs(args.viral, args.other, args.protein_reference or ())
    args.inputs = list(inputs.files)
    settings = settings_from_args(args)
    display = display_factory(verbosity(args), args.progress_interval)

    result = run_training(settings, inputs, options, progress=display)
    s = result.summary
    logger.info(
        "trained %s: %d epochs (best %d%s); validation accuracy %.4f, F1 %.4f, "
        "ROC AUC %s; ORFs: %s",
        result.model,
        s["epochs_run"],
        s["best_epoch"],
        ", stopped early" if s["stopped_early"] else "",
        s["best"]["accuracy"],
        s["best"]["f1"],
        "NA" if s["best"]["roc_auc"] is None else f"{s['best']['roc_auc']:.4f}",
        s["selection"]["description"],
    )
    logger.info(
        "log: %s; summary: %s", Path(result.out) / TRAINING_LOG, Path(result.out) / TRAINING_SUMMARY
    )
    return 0
