"""``virnuc-dask models fetch --to DIR``: stage the models for nodes without internet."""

from __future__ import annotations

import argparse
from pathlib import Path

from virnuc_dask.cli.options import add_logging
from virnuc_dask.config import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    models = subparsers.add_parser(
        "models",
        help="stage the embedding models for nodes without internet access",
        description="Model files for runs on nodes without internet access.",
    )
    commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    defaults = Settings()
    fetch = commands.add_parser(
        "fetch",
        help="download ESM-2 and DNABERT-S once into a directory",
        description="Download ESM-2 (fair-esm checkpoint and its contact-regression file) "
        "and DNABERT-S (config, weights, tokenizer) into DIR, check that an offline run "
        "finds them, and print how to point runs at DIR (--model-cache DIR --offline). "
        "Files already in DIR are not downloaded again.",
    )
    fetch.add_argument("--to", required=True, metavar="DIR", help="directory to fill")
    fetch.add_argument(
        "--esm-model",
        default=defaults.esm_model,
        metavar="NAME",
        help=f"fair-esm hub name (default {defaults.esm_model})",
    )
    fetch.add_argument(
        "--dnabert-model",
        default=defaults.dnabert_model,
        metavar="ID",
        help=f"Hugging Face hub id (default {defaults.dnabert_model})",
    )
    add_logging(fetch)
    fetch.set_defaults(run=run)
    return fetch


def run(args: argparse.Namespace) -> int:
    from dask.utils import format_bytes

    from virnuc_dask.models.staging import fetch_models, usage_hint

    root = Path(args.to).expanduser().absolute()
    staged = fetch_models(root, esm_model=args.esm_model, dnabert_model=args.dnabert_model)
    print(f"ESM-2 {staged.esm_model}: {staged.esm}")
    print(f"DNABERT-S {staged.dnabert_model}: {staged.dnabert}")
    print(f"{len(staged.files())} files, {format_bytes(staged.size())} in {staged.root}")
    print(usage_hint(staged))
    return 0
