"""``virnuc-dask validate INPUT...`` or ``--samplesheet SHEET``: check inputs and estimate
the run time, no models."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virnuc_dask.cli.options import (
    add_config,
    add_embedding_models,
    add_length,
    add_logging,
    add_precision,
)
from virnuc_dask.config import ConfigError, load_settings
from virnuc_dask.formatting import duration_words, si
from virnuc_dask.models.registry import MODEL_KEYS, MODEL_NAMES


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
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="FASTA or FASTQ file(s), plain or gzip (two mate files one after the other: "
        "paired reads)",
    )
    parser.add_argument(
        "--samplesheet",
        metavar="CSV",
        help="check the samples of a sequencing run's sheet (sample,fastq_1,fastq_2[,fasta]) "
        "and report per sample, instead of INPUT files",
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
    from virnuc_dask.validate.input_stats import file_summary, repeated_inputs
    from virnuc_dask.validate.inputs import exit_code, validate

    if args.max_findings < 0:
        raise ConfigError(f"--max-findings must be >= 0, got {args.max_findings}")
    if bool(args.inputs) == bool(args.samplesheet):
        raise ConfigError("give INPUT files or --samplesheet CSV (one of the two)")
    overrides = {
        "length": args.length,
        "esm_model": args.esm_model,
        "dnabert_model": args.dnabert_model,
        "model_cache": args.model_cache,
        "precision": args.precision,
        "gpus": args.gpus,
    }
    settings = load_settings(inputs=args.inputs, config_file=args.config, overrides=overrides)
    if args.samplesheet:
        return run_samplesheet(args, settings)
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


def run_samplesheet(args: argparse.Namespace, settings: Any) -> int:
    """``validate --samplesheet``: the sheet, then each sample's files, per sample."""
    from virnuc_dask.core.samplesheet import read_samplesheet
    from virnuc_dask.validate.input_stats import file_summary
    from virnuc_dask.validate.inputs import exit_code, validate_samples

    sheet = read_samplesheet(args.samplesheet)  # a bad sheet: exit 1, naming the line
    checked, est = validate_samples(
        sheet, settings, max_findings=args.max_findings, with_estimate=not args.no_estimate
    )
    lines = [f"{sheet.path}: {len(sheet)} samples"]
    for sample, files in checked:
        reads = sum(f.records for f in files)
        pairs = f", {reads // 2:,} pairs" if sample.kind == "paired" else ""
        lanes = f"{len(sample.lanes)} lane{'s' if len(sample.lanes) > 1 else ''}"
        code = exit_code(files)
        verdict = {0: "ok", 1: "ERROR", 2: "problems"}[code]
        lines.append(
            f"sample {sample.name} (sheet line {sample.line}; {sample.kind}, {lanes}): "
            f"{reads:,} reads{pairs}: {verdict}"
        )
        text = report_text(files, settings.length, None, args.max_findings)
        lines.extend("  " + line for line in text.splitlines())
    if est is not None:
        lines.extend(report_text([], settings.length, est, args.max_findings).splitlines())
    print("\n".join(lines))
    code = max((exit_code(files) for _, files in checked), key=[0, 2, 1].index)
    if args.json:
        doc = {
            "exit_code": code,
            "samplesheet": sheet.path,
            "length": settings.length,
            "samples": [
                {
                    "sample": sample.name,
                    "kind": sample.kind,
                    "line": sample.line,
                    "exit_code": exit_code(files),
                    "files": [file_summary(f, settings.length) for f in files],
                }
                for sample, files in checked
            ],
            "estimate": est,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return code


def _si(value: float, unit: str) -> str:
    return si(value, unit) if value >= 1000 else f"{value:.3g} {unit}"


def report_text(
    files: Sequence[Any], chunk_size: int, est: dict[str, Any] | None, max_findings: int
) -> str:
    """The findings of :func:`virnuc_dask.validate.inputs.validate` (its ``FileStats``) and
    the estimate, as the command prints them."""
    import numpy as np

    from virnuc_dask.validate.input_stats import length_buckets, repeated_inputs

    lines = []
    for stats in files:
        kind = "gzip" if stats.compressed else "plain"
        lines.append(
            f"{stats.path}: {stats.records:,} records, {stats.bases:,} bp, "
            f"{stats.format.upper()} ({kind})"
        )
        lengths = stats.length_array()
        if len(lengths):
            lines.append(
                f"  lengths   min {lengths.min():,} · median {np.median(lengths):,.0f}"
                f" · mean {lengths.mean():,.1f} · max {lengths.max():,} bp"
            )
            buckets = [f"{label}: {n:,}" for label, n in length_buckets(lengths, chunk_size) if n]
            lines.append("            " + " · ".join(buckets))
            lines.append(
                f"  expected  {stats.chunks:,} chunks of {chunk_size} bp · "
                f"{stats.orfs:,} ORFs · {stats.reads_no_orf:,} reads without ORF · "
                f"{stats.esm_tokens:,} ESM-2 tokens"
            )
        shown = {k: sum(f.kind == k for f in stats.findings) for k in stats.counts}
        for finding in stats.findings:
            lines.append(f"  {finding}")
        for k, n in stats.counts.items():
            if n > shown[k]:
                lines.append(
                    f"  ... and {n - shown[k]:,} more {k}s (--max-findings {max_findings} shown)"
                )
        if not stats.findings:
            lines.append("  no problems found")
    if len(files) > 1:
        lines.append(
            f"total: {sum(f.records for f in files):,} records, "
            f"{sum(f.chunks for f in files):,} chunks, {sum(f.orfs for f in files):,}"
            " ORFs"
        )
    repeats = repeated_inputs(files)
    if repeats["reads"]["total"]:
        r = repeats["reads"]
        unique = ", ".join(
            f"{name} {repeats[key]['unique']:,}" for key, name in MODEL_NAMES.items()
        )
        lines.append(
            f"duplicates: {r['total'] - r['unique']:,} of {r['total']:,} reads "
            f"({r['duplicate_share']:.1%}) repeat an earlier read's sequence; "
            f"expected unique ORFs (embedded once each): {unique} "
            f"of {repeats[MODEL_KEYS[0]]['total']:,}"
        )
    if est is not None:
        if "error" in est:
            lines.append(f"run time: no estimate: {est['error']}")
        else:
            lines.append(
                f"run time estimate for {est['esm_model']} ({est['esm_shape']}) + "
                f"{est['dnabert_model']} ({est['dnabert_shape']}), {est['precision']} on "
                f"{est['devices']} {est['device']} device(s):"
            )
            share = est["esm_flops"] / est["flops"] if est["flops"] else 0
            lines.append(
                f"  model work {_si(est['flops'], 'FLOP')} (ESM-2 {share:.0%}); "
                f"DNABERT-S tokens from {est['dnabert_tokens_from']}"
            )
            lines.append(
                f"  measured matmul rate {_si(est['matmul_flops_per_s'], 'FLOP/s')} per device"
            )
            lines.append(
                f"  at that rate: {duration_words(est['seconds_at_peak'])}; at "
                f"{est['assumed_utilization']:.0%} of it (typical of a well-fed run):"
                f" about {duration_words(est['seconds_expected'])}"
            )
    return "\n".join(lines)
