"""``virnuc-dask validate INPUT...``: check inputs and estimate the run time, no models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from virnuc_dask.cli.options import (
    add_config,
    add_embedding_models,
    add_length,
    add_logging,
    add_precision,
)
from virnuc_dask.config import ConfigError, load_settings


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "validate",
        help="check FASTA/FASTQ inputs and estimate the run time, without models",
        description="Read every INPUT completely and report records, the length "
        "distribution, the chunks and ORFs a run will produce, the share of duplicate reads "
        "and the unique ORF inputs, and every problem with its "
        "file, line and record; then estimate the embedding time of the chosen models on "
        "this machine (model FLOPs of the ORFs over a measured matrix-multiply rate). "
        "Exit 0 clean, 2 problems found (predict would skip records), 1 an input cannot be "
        "read as FASTA or FASTQ.",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="FASTA or FASTQ file(s), plain or gzip"
    )
    add_length(parser)
    add_embedding_models(parser)  # the models the estimate is for
    add_precision(parser, what="precision the estimate is for")
    parser.add_argument("--gpus", metavar="IDS", help="GPU ids a run would use, e.g. 0,1")
    add_config(parser)
    parser.add_argument(
        "--max-findings",
        type=int,
        default=20,
        metavar="N",
        help="findings of each kind shown per file (default 20)",
    )
    parser.add_argument(
        "--no-estimate",
        action="store_true",
        help="skip the run-time estimate (and its matmul measurement)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.tools.validate import (
        exit_code,
        file_summary,
        repeated_inputs,
        report_text,
        validate,
    )

    if args.max_findings < 0:
        raise ConfigError(f"--max-findings must be >= 0, got {args.max_findings}")
    overrides = {
        "length": args.length,
        "esm_model": args.esm_model,
        "dnabert_model": args.dnabert_model,
        "model_cache": args.model_cache,
        "precision": args.precision,
        "gpus": args.gpus,
    }
    settings = load_settings(inputs=args.inputs, config_file=args.config, overrides=overrides)
    files, est = validate(
        args.inputs, settings, max_findings=args.max_findings, with_estimate=not args.no_estimate
    )
    print(report_text(files, settings.length, est, args.max_findings))
    code = exit_code(files)
    if args.json:
        doc = {
            "exit_code": code,
            "length": settings.length,
            "files": [file_summary(f, settings.length) for f in files],
            "repeats": repeated_inputs(files),
            "estimate": est,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return code
