"""Tokens/s of each embedding stage, eager against compiled layers, fp32 against bf16.

    python benchmarks/layer_speed.py [--size small] [--reads 64] [--rounds 3]
                                     [--variants fp32,fp32-compiled,bf16,bf16-compiled]

The ORFs of generated coding-like reads (the ``bench`` input) are embedded through the
pipeline's embedding path (each registered model's adapter through
:func:`virnuc_dask.worker.batch_runner.embed`: the runner's batching and padding) by the
``bench`` models of ``--size``, once per variant per round, the variants alternating
within each round so that they share the machine's load. Printed per stage and variant:
the best tokens/s, the median ratio to the first variant over the rounds (a same-round
ratio), and the share of the matmul peak of the variant's precision
(:func:`.flops.peak_sweep`, fp32 and bf16, measured before and after; the best taken).
Compilation happens in a warm-up call, whose time is printed. The script prints numbers;
it is not a test.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from virnuc_dask.bench.kit import build_models, read_orfs_of, write_bench_input
from virnuc_dask.models.flops import module_shape, peak_sweep
from virnuc_dask.models.registry import EMBEDDING_MODELS
from virnuc_dask.worker.batch_runner import embed

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--reads", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="fp32,fp32-compiled,bf16,bf16-compiled")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = build_models(work / "models", args.size)
        _, orfs = read_orfs_of(str(write_bench_input(work / "reads.fa", args.reads)), 500)
        texts = {m.key: [getattr(o, m.embeds) for o in orfs] for m in EMBEDDING_MODELS}
        peaks = {p: [peak_sweep("cpu", d).peak] for p, d in DTYPES.items()}
        models: dict[str, dict] = {}
        shapes, lengths = {}, {}
        for v in variants:
            precision, compiled = v.split("-")[0], v.endswith("-compiled")
            models[v] = {}
            for m in EMBEDDING_MODELS:
                adapter = m.load_adapter(paths[m.source_setting], dtype=DTYPES[precision])
                adapter.model.compile_layers(compiled)
                models[v][m.key] = functools.partial(embed, adapter, texts[m.key])
                shapes[m.key] = module_shape(adapter.model)
                lengths[m.key] = np.array([len(t) for t in adapter.tokenize(texts[m.key])])
        flops = {m: shapes[m].flops_of(lengths[m]) for m in lengths}
        warmup: dict[str, dict[str, float]] = {}
        seconds: dict[str, dict[str, list[float]]] = {}
        embeddings: dict[str, dict[str, np.ndarray]] = {}
        for stage in (m.key for m in EMBEDDING_MODELS):
            for v in variants:
                t = time.perf_counter()
                embeddings.setdefault(stage, {})[v] = models[v][stage]()[0]
                warmup.setdefault(stage, {})[v] = time.perf_counter() - t
            for _ in range(args.rounds):
                for v in variants:
                    _, stats = models[v][stage]()
                    seconds.setdefault(stage, {}).setdefault(v, []).append(stats.seconds)
        for p, d in DTYPES.items():
            peaks[p].append(peak_sweep("cpu", d).peak)
    peak = {p: max(s) for p, s in peaks.items()}
    result = {"peaks": peaks, "flops": flops, "warmup_s": warmup, "seconds": seconds}
    tokens = {m: float(lengths[m].sum()) for m in lengths}
    print(
        f"{len(orfs)} ORFs, size {args.size}, {torch.get_num_threads()} threads; matmul peak "
        + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peak.items())
    )
    header = ("stage", "variant", "tok/s", "x first", "of peak", "warm-up s")
    print("{:<8} {:<14} {:>8} {:>8} {:>8} {:>9}".format(*header))
    first = variants[0]
    for stage, by_variant in seconds.items():
        for v, times in by_variant.items():
            ratio = statistics.median(a / b for a, b in zip(by_variant[first], times, strict=True))
            share = flops[stage] / min(times) / peak[v.split("-")[0]]
            print(
                f"{stage:<8} {v:<14} {tokens[stage] / min(times):>8.0f} {ratio:>8.2f} "
                f"{share:>8.2f} {warmup[stage][v]:>9.1f}"
            )
            diff = np.abs(embeddings[stage][v] - embeddings[stage][first]).max()
            result.setdefault("max_diff_vs_first", {}).setdefault(stage, {})[v] = float(diff)
    print("largest embedding difference from", first, json.dumps(result["max_diff_vs_first"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
