"""``virnuc-dask doctor``: one line per check (✓/✗ and the figure), ``--json``, exit 0
only when every check passes. The checks: :mod:`virnuc_dask.doctor.checks`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from virnuc_dask.cli.options import add_logging


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "doctor",
        help="check this node (GPU or CPU) before trusting it with a long run",
        description="Check torch, CUDA and the driver, the GPUs NVML lists against those "
        "torch can use, dask-cuda, each device (name, compute capability, memory, the "
        "precision auto picks, matmul rates, attention kernels on the models' shapes), "
        "free disk at --out, the model files given, and one partition of predict with "
        "demonstration models on the cluster a run would start, against a packaged golden "
        "case. Prints one line per check; exit 0 only when all pass.",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=".",
        help="directory a run would write to: its free space is checked and "
        "the check's scratch files go there (default: .)",
    )
    parser.add_argument("--esm-model", metavar="PATH", help="ESM-2 .pt file to load and check")
    parser.add_argument(
        "--dnabert-model", metavar="DIR", help="DNABERT-S directory to load and check"
    )
    parser.add_argument(
        "--classifier",
        metavar="PATH",
        help="classifier file whose input width must match the models",
    )
    parser.add_argument("--json", metavar="FILE", help="write every check as JSON")
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def line(check: Any) -> str:
    """``✓ key: text`` or ``✗ key: text`` for a :class:`~virnuc_dask.doctor.check_result.Check`."""
    return f"{'✓' if check.ok else '✗'} {check.key}: {check.text}"


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.doctor.checks import report, run_checks
    from virnuc_dask.models.registry import EMBEDDING_MODELS

    checks = run_checks(
        out=Path(args.out),
        models={m.source_setting: getattr(args, m.source_setting) for m in EMBEDDING_MODELS},
        classifier=args.classifier,
        on_check=lambda check: print(line(check), flush=True),
    )
    document = report(checks)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 0 if document["ok"] else 1
