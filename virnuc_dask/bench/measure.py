"""``virnuc-dask bench``: how close the embedding stages come to the hardware, in one run.

On one input and one set of models it measures

- the machine's matmul peak: a large GEMM in the precision of the run (fp32 on CPU
  unless ``--precision`` says otherwise);
- per embedding stage, inside the first ``predict`` run (one worker): tokens/s, model
  FLOP/s (useful FLOPs of the real tokens: 2 x matmul parameters per token plus
  4 x length^2 x width per layer of attention) and their ratio to the peak; the
  padding efficiency (real / padded tokens);
- the effect of the prefetch thread (tokenising, padding and copying the next
  batch during the current forward), from the same partition embedded with and
  without it;
- end-to-end reads/s of :func:`.pipeline.predict` on a local cluster of each
  worker count asked for, per worker and in total;
- the same workload the original VirNucPro way, in this one process: DNABERT-S
  one unpadded sequence per call, ESM-2 in fair-esm's ``FastaBatchedDataset``
  batches of 2048 tokens through fair-esm's own forward; the speedup over it,
  and the largest score difference between the two;
- bf16 and fp16 against fp32 on a sample of the ORFs: cosine similarity of the
  embeddings and ORF labels flipped.

Models: the real architectures with random weights in the real file formats
(:mod:`virnuc_dask.models.demo` builders), ``--size small`` = ESM-2 8M layout (6 layers x 320, 20
heads) and DNABERT-S 2 layers x 256; or real model files with ``--esm-model``,
``--dnabert-model`` (and a random classifier matching them). The input is a
FASTA file, or reads generated like the perf inputs (coding-like, 400-600 bp).

The measurements are functions of :mod:`.throughput`, :mod:`.original` and
:mod:`.agreement`; this module runs them in order and assembles the JSON document.

From the command line::

    virnuc-dask bench --size tiny --reads 40 --workers 1 --json bench.json
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnuc_dask.bench.kit import (
    build_models,
    read_orfs_of,
    release_device,
    write_bench_input,
)
from virnuc_dask.bench.original import interleaved_speedup, run_original_style
from virnuc_dask.bench.throughput import (
    check_worker_counts,
    prefetch_effect,
    run_pipeline,
    stage_figures,
)
from virnuc_dask.errors import VirnucError
from virnuc_dask.models.flops import module_shape, peak_sweep
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS
from virnuc_dask.rundir import STORE
from virnuc_dask.worker.agreement import precision_agreement

logger = logging.getLogger(__name__)

SAMPLE_ORFS = 256  # ORFs of the with/without-prefetch and original/ours comparisons
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The peak a stage is compared with: that of the precision it runs in (fp16 runs on the
# bf16 matrix units' rate where there is no fp16 one measured).
PEAK_OF = {"fp32": "fp32", "bf16-mixed": "bf16", "bf16": "bf16", "fp16": "bf16"}
REQUIRED_KEYS = (
    "matmul_peak_flops",
    *(f"{key}_utilization" for key in MODEL_KEYS),
    "padding_efficiency",
    "pipeline_reads_per_s",
    "original_style_reads_per_s",
    "speedup_vs_original",
    "workers",
)


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What to measure: the input (or ``reads`` generated reads), the models (built at
    ``size`` unless files are given) and the run's knobs."""

    input: str | None = None
    reads: int | None = 2000
    length: int = 500
    size: str = "small"
    esm_model: str | None = None
    dnabert_model: str | None = None
    precision: str = "auto"
    workers: tuple[int, ...] = (1, 2)
    partition_rows: int = 512
    toks_per_batch: int | None = None
    dnabert_toks_per_batch: int | None = None
    precision_orfs: int = 128
    skip_original: bool = False
    work_dir: str | None = None


def bench(options: BenchOptions) -> dict[str, Any]:
    """Run every measurement; returns the JSON document (numbers at the top level)."""
    from virnuc_dask.config import load_settings
    from virnuc_dask.worker.device import pick_device
    from virnuc_dask.worker.plugin import resolve_precision
    from virnuc_dask.worker.precision import apply_precision, load_dtype

    t_start = time.perf_counter()
    check_worker_counts(options.workers)
    work = (
        Path(options.work_dir) if options.work_dir else Path(tempfile.mkdtemp(prefix="vd-bench-"))
    )
    work.mkdir(parents=True, exist_ok=True)
    fasta = options.input or str(write_bench_input(work / "bench_reads.fa", options.reads))
    if options.input and options.reads:
        fasta = str(_first_reads(Path(options.input), work / "bench_reads.fa", options.reads))
    device = pick_device()
    precision = resolve_precision(options.precision, device)
    logger.info("bench in %s on %s (%s); input %s", work, device, precision, fasta)
    given = {m.source_setting: m.source(options) for m in EMBEDDING_MODELS}
    if device.type == "cpu" and options.size in ("650m", "real") and not any(given.values()):
        logger.warning(
            "--size %s on a CPU: the models are the real sizes, expect hours; "
            "small is the CPU size",
            options.size,
        )
    paths = build_models(work / "models", options.size, **given)

    reads, orfs = read_orfs_of(fasta, options.length)
    if not orfs:
        raise VirnucError(f"{fasta}: no ORF at length {options.length}; nothing to benchmark")
    loads = {"start": os.getloadavg()[0]}

    # The predict runs first: until they are done this process makes no CUDA call that
    # creates a context (it would hold GPU 0, which workers of nodes whose GPUs are in
    # EXCLUSIVE_PROCESS mode then cannot use).
    settings = load_settings(
        inputs=[fasta],
        overrides={
            "out": str(work / "predict"),
            "length": options.length,
            **paths,
            "precision": precision,
            "partition_rows": options.partition_rows,
            **{m.ceiling_setting: m.ceiling(options) for m in EMBEDDING_MODELS},
            "offline": True,
        },
    )
    scaling = []
    for n in options.workers:
        logger.info("predict on %d worker(s)", n)
        scaling.append(run_pipeline(settings, n))
        loads[f"predict_{n}w"] = os.getloadavg()[0]
    # Sampled between the phases, the best taken: one sample can fall into a moment
    # when other processes hold the cores. Both precisions, whichever the run uses.
    # tiny models (tests, a quick look): a quick sweep of small sizes
    sizes = (256, 512) if options.size == "tiny" and device.type == "cpu" else None
    sweeps = {p: [peak_sweep(device, d, sizes=sizes)] for p, d in PEAK_DTYPES.items()}
    logger.info(
        "matmul peaks %s",
        ", ".join(f"{p} {s[0].peak / 1e9:.1f} GFLOP/s" for p, s in sweeps.items()),
    )

    # Models here, for the FLOP accounting, the prefetch comparison and token lengths.
    adapters = {
        m.key: m.load_adapter(paths[m.source_setting], device=device, dtype=load_dtype(precision))
        for m in EMBEDDING_MODELS
    }
    for adapter in adapters.values():
        apply_precision(adapter.model, precision)
    flops = {}
    for m in EMBEDDING_MODELS:
        tokens = adapters[m.key].tokenize([getattr(o, m.embeds) for o in orfs])
        lengths = np.array([len(t) for t in tokens])
        flops[m.key] = module_shape(adapters[m.key].model).flops_of(lengths)
    prefetch = prefetch_effect(
        adapters, orfs[: min(options.partition_rows, SAMPLE_ORFS)], device=device
    )
    loads["prefetch"] = os.getloadavg()[0]
    for p, d in PEAK_DTYPES.items():
        sweeps[p].append(peak_sweep(device, d, sizes=sizes))
    peaks = [s.peak for s in sweeps[PEAK_OF.get(precision, "fp32")]]
    shapes = {
        key: {**module_shape(a.model).as_dict(), "heads": a.heads} for key, a in adapters.items()
    }
    del adapters
    release_device(device)
    # The stage figures come from the run with the fewest workers (one worker has the
    # whole machine; more are normalised by their count, see stage_figures).
    first = min(scaling, key=lambda r: r["workers"])
    peak = max(peaks)
    stages = {
        m: stage_figures(first["embedding"][m], flops[m], peak, first["workers"]) for m in flops
    }
    best = max(scaling, key=lambda r: r["reads_per_s"])

    original: dict[str, Any] = {}
    sample = orfs[:SAMPLE_ORFS]
    if not options.skip_original:
        logger.info("the original way, one process")
        original = run_original_style(paths, fasta, options.length, device=device)
        ours = _stored_scores(first["out"])
        original["max_score_diff_vs_pipeline"] = float(np.abs(ours - original.pop("scores")).max())
        loads["original"] = os.getloadavg()[0]
        logger.info("the original way and ours alternating on %d ORFs", len(sample))
        release_device(device)
        original["interleaved"] = interleaved_speedup(
            paths, sample, device=device, precision=precision
        )
        release_device(device)
        # How busy the original way keeps the hardware, and so the most any implementation
        # can gain over it at this precision: its time over the same FLOPs at the peak.
        original["utilization"] = {m: flops[m] / original["timings_s"][m] / peak for m in flops}
        original["speedup_bound_embedding"] = sum(original["timings_s"][m] for m in flops) / (
            sum(flops.values()) / peak
        )
        original["speedup_bound_end_to_end"] = original["seconds"] / (sum(flops.values()) / peak)

    logger.info("precision agreement on %d ORFs", options.precision_orfs)
    precisions = precision_agreement(
        **paths,
        nucleotides=[o.nucleotide for o in orfs[: options.precision_orfs]],
        proteins=[o.protein for o in orfs[: options.precision_orfs]],
        ids=[o.id for o in orfs[: options.precision_orfs]],
        device=device,
    )

    padded = sum(first["embedding"][m]["padded_tokens"] for m in flops)
    real = sum(first["embedding"][m]["real_tokens"] for m in flops)
    result = {
        "matmul_peak_flops": peak,
        **{f"{key}_utilization": stages[key]["utilization"] for key in MODEL_KEYS},
        "padding_efficiency": real / padded,
        "pipeline_reads_per_s": best["reads_per_s"],
        "original_style_reads_per_s": original.get("reads_per_s"),
        "speedup_vs_original": (
            best["reads_per_s"] / original["reads_per_s"] if original else None
        ),
        "speedup_bound": original.get("speedup_bound_end_to_end"),
        "store_share": first["store_share"],
        "workers": best["workers"],
        "matmul_peak_samples": peaks,
        "matmul_peaks": {p: _peak_summary(s) for p, s in sweeps.items()},
        "device": str(device),
        "precision": precision,
        "peak_dtype": PEAK_OF.get(precision, "fp32"),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "input": fasta,
        "reads": reads,
        "orfs": len(orfs),
        "length": options.length,
        "size": options.size if not any(given.values()) else "given",
        "models": {**paths, "shapes": shapes},
        "partition_rows": options.partition_rows,
        "stages": stages,
        "prefetch": prefetch,
        "scaling": [{k: v for k, v in r.items() if k not in ("embedding", "out")} for r in scaling],
        "scaling_ratio": (
            scaling[-1]["reads_per_s"] / scaling[0]["reads_per_s"] if len(scaling) > 1 else None
        ),
        "original_style": original,
        "precision_agreement": precisions,
        "load_average": loads,
        "bench_seconds": time.perf_counter() - t_start,
    }
    return result


def _peak_summary(sweeps: list) -> dict[str, Any]:
    """The best of a precision's sweeps, and how repeatable it was: the spread of the
    rounds at the best size, and how far the other sweep's peak fell below it."""
    best = max(sweeps, key=lambda s: s.peak)
    return {
        "peak": best.peak,
        "size": best.size,
        "samples": [s.peak for s in sweeps],
        "sample_gap": 1.0 - min(s.peak for s in sweeps) / best.peak,
        "spread": best.spread,
        "by_size": best.by_size,
    }


def _stored_scores(out: str) -> np.ndarray:
    import zarr

    from virnuc_dask.dataflow.store import SCORES, read_rows

    group = zarr.open_group(str(Path(out) / STORE), mode="r")
    return read_rows(group, SCORES, 0, group[SCORES].shape[0])


def _first_reads(src: Path, dest: Path, n: int) -> Path:
    """The first ``n`` records of ``src`` (plain FASTA) written to ``dest``."""
    from virnuc_dask.core.formats import plan_blocks, read_block

    records = [r for block in plan_blocks([str(src)]) for r in read_block(block)][:n]
    with open(dest, "w") as fh:
        fh.writelines(f">{r.id}\n{r.sequence}\n" for r in records)
    return dest
