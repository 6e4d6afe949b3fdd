"""``virnuc-dask bench [INPUT]``: throughput against the hardware and the original."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from virnuc_dask.cli.options import add_logging
from virnuc_dask.config import ConfigError
from virnuc_dask.formatting import si
from virnuc_dask.models.registry import BENCH_SIZES, MODEL_NAMES


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be positive, got {text!r}")
    return counts


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="measure throughput against the hardware and the original",
        description="Measure, on one input and one set of models: the matmul peak, each "
        "embedding stage's tokens/s, FLOP/s and share of the peak, padding efficiency, "
        "the prefetch effect, predict's reads/s per worker count, the same workload run "
        "the original VirNucPro way and the speedup over it, and bf16/fp16 agreement "
        "with fp32. Prints a table; --json writes the numbers.",
    )
    parser.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help="FASTA input (default: generated coding-like 400-600 bp reads)",
    )
    parser.add_argument(
        "--reads",
        type=int,
        default=None,
        help="reads to generate (default 2000), or the first N of INPUT",
    )
    parser.add_argument("--length", type=int, default=500, help="chunk length (default 500)")
    parser.add_argument(
        "--size",
        choices=sorted(BENCH_SIZES),
        default="small",
        help="random models to build: small = ESM-2 6 x 320 (8M layout) and "
        "DNABERT-S 2 x 256; tiny = 2 x 64 each; real = ESM-2 3B (36 x 2560, "
        "an 11 GB file) and DNABERT-S (12 x 768), for GPUs; 650m = ESM-2 "
        "650M (33 x 1280) and DNABERT-S (default small)",
    )
    parser.add_argument("--esm-model", metavar="PATH", help="an ESM-2 .pt instead of --size")
    parser.add_argument(
        "--dnabert-model", metavar="DIR", help="a DNABERT-S directory instead of --size"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="precision of the throughput runs (default auto)",
    )
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        metavar="N[,N]",
        help="worker counts of the predict runs (default 1,2; on a node with one visible GPU, 1)",
    )
    parser.add_argument(
        "--partition-rows", type=int, default=512, help="ORFs per partition (default 512)"
    )
    parser.add_argument("--toks-per-batch", type=int, help="ESM-2 token budget (default auto)")
    parser.add_argument(
        "--dnabert-toks-per-batch", type=int, help="DNABERT-S token budget (default auto)"
    )
    parser.add_argument(
        "--precision-orfs",
        type=int,
        default=128,
        help="ORFs compared across precisions (default 128)",
    )
    parser.add_argument(
        "--skip-original", action="store_true", help="do not run the original-style comparison"
    )
    parser.add_argument(
        "--work-dir",
        metavar="DIR",
        help="keep models, input and runs here (default: a temporary dir)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from virnuc_dask.bench.measure import BenchOptions, bench
    from virnuc_dask.bench.throughput import default_worker_counts

    if args.input is None and args.reads is None:
        args.reads = 2000
    for name in ("reads", "length", "partition_rows", "precision_orfs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    options = BenchOptions(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(BenchOptions)}
    )
    workers = tuple(args.workers) if args.workers else default_worker_counts()
    result = bench(dataclasses.replace(options, workers=workers))
    Console().print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def _fmt_rate(value: float | None, unit: str = "") -> str:
    return si(value, unit, missing="-")


def render(result: dict[str, Any]) -> Any:
    """The bench result as a rich table."""
    from rich.table import Table

    table = Table(
        title=f"virnuc-dask bench: {result['reads']} reads, {result['orfs']} ORFs, "
        f"{result['device']} {result['precision']}, size {result['size']}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("detail")
    add = table.add_row
    add(
        "matmul peak",
        _fmt_rate(result["matmul_peak_flops"], "FLOP/s"),
        f"{result['peak_dtype']} GEMM, {result['torch_threads']} threads, best of "
        f"{len(result['matmul_peak_samples'])} samples (lowest "
        f"{_fmt_rate(min(result['matmul_peak_samples']), 'FLOP/s')})",
    )
    for m, name in MODEL_NAMES.items():
        s = result["stages"][m]
        p = result["prefetch"][m]
        add(
            f"{name} stage",
            f"{s['utilization']:.0%} of peak",
            f"{_fmt_rate(s['tokens_per_s'], 'tok/s')}, {_fmt_rate(s['flop_per_s'], 'FLOP/s')}, "
            f"padding eff. {s['padding_efficiency']:.3f}, {s['batches']} batches"
            + (f", {s['workers']} workers at once" if s.get("workers", 1) > 1 else ""),
        )
        add(
            f"{name} prefetch",
            f"x{p['ratio']:.2f}",
            f"{_fmt_rate(p['tokens_per_s_prefetch'], 'tok/s')} with, "
            f"{_fmt_rate(p['tokens_per_s_inline'], 'tok/s')} without; batch preparation "
            f"{p['prepare_share']:.1%} of the stage",
        )
    add("padding efficiency", f"{result['padding_efficiency']:.3f}", "both stages")
    if result["store_share"] is not None:
        add(
            "store beside embedding",
            f"{result['store_share']:.1%}",
            "of a partition's embed + write time is writing, done in a task of its own "
            "(the device is not held for it)",
        )
    for r in result["scaling"]:
        add(
            f"predict, {r['workers']} worker(s)",
            f"{r['reads_per_s']:.1f} reads/s",
            f"{r['reads_per_s_per_worker']:.1f} reads/s per worker, {r['seconds']:.1f} s",
        )
    if result["scaling_ratio"] is not None:
        add(
            "scaling",
            f"x{result['scaling_ratio']:.2f}",
            f"{result['scaling'][-1]['workers']} vs {result['scaling'][0]['workers']} workers",
        )
    o = result["original_style"]
    if o:
        add(
            "original way",
            f"{o['reads_per_s']:.1f} reads/s",
            f"{o['seconds']:.1f} s ("
            + ", ".join(f"{n} {o['timings_s'][m]:.1f} s" for m, n in MODEL_NAMES.items())
            + f"); max score diff "
            f"{o['max_score_diff_vs_pipeline']:.1e}",
        )
        add(
            "speedup vs original",
            f"x{result['speedup_vs_original']:.2f}",
            f"predict on {result['workers']} worker(s)",
        )
        u = o["utilization"]
        add(
            "bound at peak",
            f"x{o['speedup_bound_end_to_end']:.2f}",
            f"original way's time over its FLOPs at the peak (embeddings only "
            f"x{o['speedup_bound_embedding']:.2f}); it runs "
            + ", ".join(f"{n} at {u[m]:.0%}" for m, n in MODEL_NAMES.items())
            + " of peak",
        )
        i = o["interleaved"]
        add(
            "embedding speedup",
            f"x{i['embedding_speedup']:.2f}",
            ", ".join(f"{n} x{i[f'{m}_speedup']:.2f}" for m, n in MODEL_NAMES.items())
            + f": {i['orfs']} ORFs, both ways alternating",
        )
    for name, p in result["precision_agreement"].items():
        if "error" in p:
            add(f"{name} vs fp32", "n/a", p["error"])
            continue
        add(
            f"{name} vs fp32",
            f"{p['labels_flipped']}/{p['orfs']} flipped",
            "cosine "
            + "; ".join(
                f"{n} min {p[f'{m}_cosine_min']:.5f} mean {p[f'{m}_cosine_mean']:.5f}"
                for m, n in MODEL_NAMES.items()
            ),
        )
    loads = result["load_average"]
    add(
        "bench time",
        f"{result['bench_seconds']:.0f} s",
        f"1-min load average {min(loads.values()):.1f}-{max(loads.values()):.1f} on "
        f"{result['cpu_count']} cores (other processes disturb timings)",
    )
    return table
