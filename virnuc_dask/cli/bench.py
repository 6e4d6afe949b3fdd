"""``virnuc-dask bench [INPUT]``: throughput against the hardware and the original."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from virnuc_dask.cli.options import add_logging
from virnuc_dask.config import ConfigError
from virnuc_dask.models.sizes import SIZES


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2, got {text!r}") \
            from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be positive, got {text!r}")
    return counts


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="measure throughput against the hardware and the original",
        description="Measure, on one input and one set of models: the matmul peak, each "
        "embedding stage's tokens/s, FLOP/s and share of the peak, padding efficiency, "
        "the prefetch effect, predict's reads/s per worker count, the same workload run "
        "the original VirNucPro way and the speedup over it, and bf16/fp16 agreement "
        "with fp32. Prints a table; --json writes the numbers.")
    parser.add_argument("input", nargs="?", metavar="INPUT",
                        help="FASTA input (default: generated coding-like 400-600 bp reads)")
    parser.add_argument("--reads", type=int, default=None,
                        help="reads to generate (default 2000), or the first N of INPUT")
    parser.add_argument("--length", type=int, default=500, help="chunk length (default 500)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="random models to build: small = ESM-2 6 x 320 (8M layout) and "
                        "DNABERT-S 2 x 256; tiny = 2 x 64 each; real = ESM-2 3B (36 x 2560, "
                        "an 11 GB file) and DNABERT-S (12 x 768), for GPUs; 650m = ESM-2 "
                        "650M (33 x 1280) and DNABERT-S (default small)")
    parser.add_argument("--esm-model", metavar="PATH", help="an ESM-2 .pt instead of --size")
    parser.add_argument("--dnabert-model", metavar="DIR",
                        help="a DNABERT-S directory instead of --size")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="precision of the throughput runs (default auto)")
    parser.add_argument("--workers", type=_worker_counts, default=[1, 2], metavar="N[,N]",
                        help="worker counts of the predict runs (default 1,2)")
    parser.add_argument("--partition-rows", type=int, default=512,
                        help="ORFs per partition (default 512)")
    parser.add_argument("--toks-per-batch", type=int, help="ESM-2 token budget (default auto)")
    parser.add_argument("--dnabert-toks-per-batch", type=int,
                        help="DNABERT-S token budget (default auto)")
    parser.add_argument("--precision-orfs", type=int, default=128,
                        help="ORFs compared across precisions (default 128)")
    parser.add_argument("--skip-original", action="store_true",
                        help="do not run the original-style comparison")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="keep models, input and runs here (default: a temporary dir)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from virnuc_dask.tools.bench import BenchOptions, bench, render

    if args.input is None and args.reads is None:
        args.reads = 2000
    for name in ("reads", "length", "partition_rows", "precision_orfs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    options = BenchOptions(**{field.name: getattr(args, field.name)
                              for field in dataclasses.fields(BenchOptions)})
    result = bench(dataclasses.replace(options, workers=tuple(args.workers)))
    Console().print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0
