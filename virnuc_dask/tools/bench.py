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
(:mod:`.demo` builders), ``--size small`` = ESM-2 8M layout (6 layers x 320, 20
heads) and DNABERT-S 2 layers x 256; or real model files with ``--esm-model``,
``--dnabert-model`` (and a random classifier matching them). The input is a
FASTA file, or reads generated like the perf inputs (coding-like, 400-600 bp).

From the command line::

    virnuc-dask bench --size tiny --reads 40 --workers 1 --json bench.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnuc_dask.errors import VirnucError
from virnuc_dask.formatting import si
from virnuc_dask.models.flops import matmul_peak, module_shape
from virnuc_dask.models.sizes import SIZES
from virnuc_dask.rundir import STORE

logger = logging.getLogger(__name__)

ORIGINAL_TOKS_PER_BATCH = 2048
SAMPLE_ORFS = 256  # ORFs of the with/without-prefetch and original/ours comparisons
WORKER_START_TIMEOUT = 120.0
REQUIRED_KEYS = ("matmul_peak_flops", "esm_utilization", "dnabert_utilization",
                 "padding_efficiency", "pipeline_reads_per_s", "original_style_reads_per_s",
                 "speedup_vs_original", "workers")


# -- inputs and models -------------------------------------------------------------------

def write_bench_input(path: Path, reads: int, *, seed: int = 2000) -> Path:
    """Coding-like reads of 400-600 bp, like the reference perf inputs."""
    from virnuc_dask.tools.demo import example_reads, write_fasta

    write_fasta(path, example_reads(reads, seed, min_length=400, max_length=600,
                                    random_every=0))
    return path


def build_models(directory: Path, size: str, *, esm_model: str | None = None,
                 dnabert_model: str | None = None) -> dict[str, str]:
    """Model files in the real formats: given ones, else random ones of ``size``; and a
    random classifier for their embedding widths."""
    from virnuc_dask.models.dnabert import DnabertConfig, resolve_dnabert_dir
    from virnuc_dask.models.esm2 import load_esm
    from virnuc_dask.tools.demo import build_classifier, build_dnabert, build_esm

    directory.mkdir(parents=True, exist_ok=True)
    shape = SIZES[size]
    if esm_model is None:
        e = shape["esm"]
        esm_model = str(build_esm(directory / f"esm2_t{e['layers']}_{e['dim']}_bench.pt", **e))
        esm_dim = e["dim"]  # not read back: with --size real that is an 11 GB load
    else:
        esm_dim = load_esm(esm_model)[0].embed_dim
    if dnabert_model is None:
        d = shape["dnabert"]
        dnabert_model = str(build_dnabert(directory / "dnabert_s_bench", **d))
    dnabert_dim = DnabertConfig.from_json(
        resolve_dnabert_dir(dnabert_model) / "config.json").hidden_size
    classifier = build_classifier(directory / "mlp_bench.pth", input_dim=dnabert_dim + esm_dim)
    return {"esm_model": esm_model, "dnabert_model": dnabert_model,
            "classifier": str(classifier)}


def read_orfs_of(path: str, length: int) -> tuple[int, list]:
    """(reads, ORFs) of a FASTA file, read and translated here."""
    from virnuc_dask.core.fasta import plan_blocks, read_block
    from virnuc_dask.core.orfs import orfs_from_records

    records = [r for block in plan_blocks([path]) for r in read_block(block)]
    return len(records), orfs_from_records(records, length).orfs


# -- hardware and FLOP accounting -----------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    """Hand this process's cached GPU memory back, for the workers (same GPUs) and the
    models loaded next: with the real sizes, two copies do not fit."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()


# -- the parts of a bench run ---------------------------------------------------------------

@contextlib.contextmanager
def _timer(into: dict[str, float], key: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    into[key] = time.perf_counter() - t


def check_worker_counts(counts: Sequence[int], gpus: Sequence[str] | None = None) -> None:
    """Refuse worker counts a local cluster cannot start: on a GPU node it starts one
    worker per visible GPU, at most (NVML is asked; no CUDA context is created)."""
    from virnuc_dask.cluster.workers import visible_gpus

    gpus = visible_gpus() if gpus is None else list(gpus)
    if gpus and max(counts) > len(gpus):
        fits = ",".join(str(n) for n in counts if n <= len(gpus)) or str(len(gpus))
        raise ValueError(
            f"--workers {','.join(map(str, counts))} asks for {max(counts)} GPU workers, but "
            f"this node has {len(gpus)} visible GPU(s) ({', '.join(gpus)}) and starts one "
            f"worker per GPU; use --workers {fits}")


def run_pipeline(settings, workers: int, *, timeout: float = WORKER_START_TIMEOUT
                 ) -> dict[str, Any]:
    """``predict`` on a local cluster of ``workers`` workers; wall time excludes startup."""
    from virnuc_dask.cluster.start import open_client
    from virnuc_dask.dataflow.pipeline import predict

    settings = settings.replace(workers=workers, out=f"{settings.out}-{workers}w",
                                overwrite=True)
    with open_client(settings) as client:
        try:
            client.wait_for_workers(workers, timeout=timeout)
        except TimeoutError:
            started = len(client.scheduler_info(n_workers=-1)["workers"])
            raise VirnucError(
                f"bench: {started} of the {workers} workers asked for started within "
                f"{timeout:.0f} s; use --workers {started or 1}") from None
        t = time.perf_counter()
        result = predict(settings, client)
        seconds = time.perf_counter() - t
    summary = result.summary
    reads = result.counts.reads
    per_worker = {addr: {"partitions": w["partitions"], "orfs": w["orfs"],
                         "embed_seconds": round(w["seconds"], 3),
                         "store_seconds": round(w.get("store_seconds", 0.0), 3),
                         "orfs_per_s": w["orfs_per_s"]}
                  for addr, w in summary["workers"].items()}
    embed_s = sum(w["seconds"] for w in summary["workers"].values())
    store_s = sum(w.get("store_seconds", 0.0) for w in summary["workers"].values())
    return {"workers": workers, "reads": reads, "orfs": result.counts.orfs,
            # Writing rows runs in a task of its own beside the next embedding task: had
            # it stayed in the embedding task, the device would have waited this share.
            "store_seconds": store_s,
            "store_share": store_s / (embed_s + store_s) if embed_s + store_s else None,
            "seconds": seconds, "reads_per_s": reads / seconds,
            "reads_per_s_per_worker": reads / seconds / workers,
            "timings_s": summary["timings_s"], "embedding": summary["embedding"],
            "per_worker": per_worker, "out": str(result.out)}


def stage_figures(stage: dict[str, Any], flops: float, peak: float,
                  workers: int = 1) -> dict[str, float]:
    """Tokens/s, FLOP/s, utilisation and padding efficiency of one stage of a run.

    A run's stage seconds are summed over its ``workers``, which embed at the same time
    on the same machine: the machine did the stage in ``seconds / workers``.
    """
    seconds = stage["seconds"] / workers
    return {"tokens": stage["real_tokens"], "padded_tokens": stage["padded_tokens"],
            "batches": stage["batches"], "seconds": seconds, "workers": workers,
            "worker_seconds": stage["seconds"],
            "tokens_per_s": stage["real_tokens"] / seconds,
            "flops": flops, "flop_per_s": flops / seconds,
            "utilization": flops / seconds / peak,
            "padding_efficiency": stage["real_tokens"] / stage["padded_tokens"]}


def prefetch_effect(models: dict[str, Any], orfs: list, *, device: torch.device,
                    rounds: int = 2) -> dict[str, dict[str, float]]:
    """Tokens/s of each stage on ``orfs`` with and without the prefetch thread (best of
    ``rounds``, alternating, so that both see the same machine), and the share of the
    stage's time spent preparing batches (tokenising, padding, copying) when not
    overlapped: what the prefetch thread can hide at most."""
    from virnuc_dask.worker.embed import embed_dnabert, embed_esm

    runs = {
        "esm": lambda prefetch: embed_esm(models["esm"], models["alphabet"],
                                          [o.protein for o in orfs], device=device,
                                          prefetch=prefetch)[1],
        "dnabert": lambda prefetch: embed_dnabert(models["dnabert"], models["tokenizer"],
                                                  [o.nucleotide for o in orfs], device=device,
                                                  prefetch=prefetch)[1],
    }
    out: dict[str, dict[str, float]] = {}
    for stage, run in runs.items():
        best = {True: 0.0, False: 0.0}
        share = 1.0
        for _ in range(rounds):
            for prefetch in (True, False):
                stats = run(prefetch)
                best[prefetch] = max(best[prefetch], stats.real_tokens / stats.seconds)
                if not prefetch:
                    share = min(share, stats.prepare_seconds / stats.seconds)
        out[stage] = {"tokens_per_s_prefetch": best[True], "tokens_per_s_inline": best[False],
                      "ratio": best[True] / best[False], "prepare_share": share}
    return out


@torch.inference_mode()
def original_dnabert(model: torch.nn.Module, tokenizer: Any, sequences: Sequence[str], *,
                     device: torch.device) -> np.ndarray:
    """DNABERT-S the original way: one unpadded sequence per call, mean over all tokens."""
    out = np.zeros((len(sequences), model.hidden_size), dtype=np.float32)
    for i, seq in enumerate(sequences):
        (ids,) = tokenizer.encode([seq])
        hidden = model(torch.tensor([ids], device=device))
        out[i] = hidden.mean(dim=1)[0].float().cpu().numpy()
    return out


@torch.inference_mode()
def original_esm(model: torch.nn.Module, alphabet: Any, proteins: Sequence[str], *,
                 device: torch.device) -> np.ndarray:
    """ESM-2 the original way: fair-esm's ``FastaBatchedDataset`` batches of 2048 tokens,
    its batch converter and its own forward; mean over residues ``1..min(len, 1024)``."""
    from esm import FastaBatchedDataset

    dataset = FastaBatchedDataset([str(i) for i in range(len(proteins))], list(proteins))
    batches = dataset.get_batch_indices(ORIGINAL_TOKS_PER_BATCH, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(
        dataset, collate_fn=alphabet.get_batch_converter(), batch_sampler=batches)
    out = np.zeros((len(proteins), model.embed_dim), dtype=np.float32)
    layer = model.num_layers
    for labels, strs, toks in loader:
        rep = model(toks.to(device), repr_layers=[layer])["representations"][layer]
        for i, label in enumerate(labels):
            n = min(1024, len(strs[i]))
            out[int(label)] = rep[i, 1:n + 1].mean(0).float().cpu().numpy()
    return out


def run_original_style(paths: dict[str, str], fasta: str, length: int, *,
                       device: torch.device) -> dict[str, Any]:
    """The workload as VirNucPro's ``prediction.py`` runs it, in this process.

    Reading and six-frame translation use this package's functions (faster than the
    original's Biopython loops, so the comparison favours the original); the original's
    intermediate ``.pt``/FASTA files are not written.
    """
    from virnuc_dask.models.classifier import load_classifier, score
    from virnuc_dask.models.dnabert import load_dnabert
    from virnuc_dask.models.esm2 import load_esm

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with _timer(times, "load_models"):
        dnabert, tokenizer = load_dnabert(paths["dnabert_model"], device=device)
        esm, alphabet = load_esm(paths["esm_model"], device=device)
        classifier = load_classifier(paths["classifier"])
    with _timer(times, "read_translate"):
        reads, orfs = read_orfs_of(fasta, length)
    with _timer(times, "dnabert"):
        dn = original_dnabert(dnabert, tokenizer, [o.nucleotide for o in orfs], device=device)
    with _timer(times, "esm"):
        es = original_esm(esm, alphabet, [o.protein for o in orfs], device=device)
    with _timer(times, "classify"):
        scores = score(classifier, np.concatenate([dn, es], axis=1))
    seconds = time.perf_counter() - t0
    return {"reads": reads, "orfs": len(orfs), "seconds": seconds,
            "reads_per_s": reads / seconds,
            "timings_s": {k: round(v, 3) for k, v in times.items()}, "scores": scores}


def interleaved_speedup(paths: dict[str, str], orfs: list, *, device: torch.device,
                        precision: str, rounds: int = 2) -> dict[str, float]:
    """Embedding time of the original way over this package's, on the same ORFs, the two
    alternating ``rounds`` times (best of each): a ratio that a shared machine's changing
    load disturbs far less than two long runs minutes apart."""
    from virnuc_dask.models.dnabert import load_dnabert
    from virnuc_dask.models.esm2 import load_esm
    from virnuc_dask.models.esm_fast import SdpaEsm2
    from virnuc_dask.worker.embed import embed_dnabert, embed_esm
    from virnuc_dask.worker.plugin import DTYPES

    nucleotides = [o.nucleotide for o in orfs]
    proteins = [o.protein for o in orfs]
    dn_ref, tok = load_dnabert(paths["dnabert_model"], device=device)
    esm_ref, alphabet = load_esm(paths["esm_model"], device=device)
    dtype = DTYPES[precision]
    dn_ours = load_dnabert(paths["dnabert_model"], device=device, dtype=dtype)[0]
    esm_ours = SdpaEsm2(load_esm(paths["esm_model"], device=device, dtype=dtype)[0])
    runs = {
        ("dnabert", "original"): lambda: original_dnabert(dn_ref, tok, nucleotides,
                                                          device=device),
        ("dnabert", "ours"): lambda: embed_dnabert(dn_ours, tok, nucleotides, device=device),
        ("esm", "original"): lambda: original_esm(esm_ref, alphabet, proteins, device=device),
        ("esm", "ours"): lambda: embed_esm(esm_ours, alphabet, proteins, device=device),
    }
    best = dict.fromkeys(runs, math.inf)
    for _ in range(rounds):
        for key, run in runs.items():
            t = time.perf_counter()
            run()
            _sync(device)
            best[key] = min(best[key], time.perf_counter() - t)
    out = {f"{m}_speedup": best[(m, "original")] / best[(m, "ours")] for m in ("dnabert", "esm")}
    out["embedding_speedup"] = (best[("dnabert", "original")] + best[("esm", "original")]) / (
        best[("dnabert", "ours")] + best[("esm", "ours")])
    out["orfs"] = len(orfs)
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.where(norms == 0, 1.0, norms)


def precision_agreement(
    *, esm_model: str, dnabert_model: str, classifier: str, nucleotides: Sequence[str],
    proteins: Sequence[str], precisions: Sequence[str] = ("bf16", "fp16"),
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Each precision against fp32 on the same ORFs, through the pipeline's embedding path.

    Per precision: cosine similarity of each model's embeddings (min, mean), ORF labels
    flipped (argmax of the classifier's scores), largest score difference, seconds of
    embedding. A precision the device cannot run is reported with its error instead.
    ``bf16-mixed`` is :func:`.precision.to_mixed`: bf16 weights and matrix products,
    everything else (LayerNorm, softmax, the residual stream) in fp32.
    """
    from virnuc_dask.models.classifier import load_classifier, score
    from virnuc_dask.models.dnabert import load_dnabert
    from virnuc_dask.models.esm2 import load_esm
    from virnuc_dask.models.esm_fast import SdpaEsm2
    from virnuc_dask.worker.embed import embed_dnabert, embed_esm
    from virnuc_dask.worker.precision import DTYPES, to_mixed

    device = torch.device(device)
    mlp = load_classifier(classifier)

    def embed(precision: str) -> tuple[np.ndarray, np.ndarray, float]:
        mixed = precision == "bf16-mixed"
        dtype = torch.float32 if mixed else DTYPES[precision]
        dn_model, tokenizer = load_dnabert(dnabert_model, device=device, dtype=dtype)
        esm, alphabet = load_esm(esm_model, device=device, dtype=dtype)
        if mixed:
            to_mixed(dn_model)
            to_mixed(esm)
        t = time.perf_counter()
        dn, _ = embed_dnabert(dn_model, tokenizer, nucleotides, device=device)
        es, _ = embed_esm(SdpaEsm2(esm), alphabet, proteins, device=device)
        return dn, es, time.perf_counter() - t

    base_dn, base_es, _ = embed("fp32")
    base_scores = score(mlp, np.concatenate([base_dn, base_es], axis=1))
    base_labels = base_scores[:, 1] > base_scores[:, 0]
    out: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        try:
            dn, es, seconds = embed(precision)
        except (RuntimeError, ArithmeticError) as exc:  # e.g. no kernel for this dtype here
            out[precision] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        scores = score(mlp, np.concatenate([dn, es], axis=1))
        cos = {"dnabert": _cosine(base_dn, dn), "esm": _cosine(base_es, es)}
        out[precision] = {
            "orfs": len(proteins), "seconds": seconds,
            **{f"{m}_cosine_min": float(c.min()) for m, c in cos.items()},
            **{f"{m}_cosine_mean": float(c.mean()) for m, c in cos.items()},
            "labels_flipped": int(((scores[:, 1] > scores[:, 0]) != base_labels).sum()),
            "max_score_diff": float(np.abs(scores - base_scores).max()),
        }
    return out


# -- the command ---------------------------------------------------------------------------

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
    from virnuc_dask.models.dnabert import load_dnabert
    from virnuc_dask.models.esm2 import load_esm
    from virnuc_dask.models.esm_fast import SdpaEsm2
    from virnuc_dask.worker.plugin import DTYPES, pick_device, resolve_precision

    t_start = time.perf_counter()
    check_worker_counts(options.workers)
    work = (Path(options.work_dir) if options.work_dir
            else Path(tempfile.mkdtemp(prefix="vd-bench-")))
    work.mkdir(parents=True, exist_ok=True)
    fasta = options.input or str(write_bench_input(work / "bench_reads.fa", options.reads))
    if options.input and options.reads:
        fasta = str(_first_reads(Path(options.input), work / "bench_reads.fa", options.reads))
    device = pick_device()
    precision = resolve_precision(options.precision, device)
    dtype = DTYPES[precision]
    peak_dtype = dtype  # the peak of the precision the models run in
    logger.info("bench in %s on %s (%s); input %s", work, device, precision, fasta)
    if device.type == "cpu" and options.size in ("650m", "real") and not options.esm_model:
        logger.warning("--size %s on a CPU: the models are the real sizes, expect hours; "
                       "small is the CPU size", options.size)
    paths = build_models(work / "models", options.size, esm_model=options.esm_model,
                         dnabert_model=options.dnabert_model)

    reads, orfs = read_orfs_of(fasta, options.length)
    if not orfs:
        raise VirnucError(f"{fasta}: no ORF at length {options.length}; nothing to benchmark")
    loads = {"start": os.getloadavg()[0]}

    # The predict runs first: until they are done this process makes no CUDA call that
    # creates a context (it would hold GPU 0, which workers of nodes whose GPUs are in
    # EXCLUSIVE_PROCESS mode then cannot use).
    settings = load_settings(inputs=[fasta], overrides={
        "out": str(work / "predict"), "length": options.length, **paths, "precision": precision,
        "partition_rows": options.partition_rows, "toks_per_batch": options.toks_per_batch,
        "dnabert_toks_per_batch": options.dnabert_toks_per_batch, "offline": True})
    scaling = []
    for n in options.workers:
        logger.info("predict on %d worker(s)", n)
        scaling.append(run_pipeline(settings, n))
        loads[f"predict_{n}w"] = os.getloadavg()[0]
    # Sampled between the phases, the best taken: one sample can fall into a moment
    # when other processes hold the cores.
    peaks = [matmul_peak(device, peak_dtype)]
    logger.info("matmul peak %.1f GFLOP/s (%s)", peaks[0] / 1e9, peak_dtype)

    # Models here, for the FLOP accounting, the prefetch comparison and token lengths.
    dnabert, tokenizer = load_dnabert(paths["dnabert_model"], device=device, dtype=dtype)
    esm, alphabet = load_esm(paths["esm_model"], device=device, dtype=dtype)
    esm = SdpaEsm2(esm)
    models = {"esm": esm, "alphabet": alphabet, "dnabert": dnabert, "tokenizer": tokenizer}
    esm_lengths = np.array([len(o.protein) + 2 for o in orfs])
    dn_lengths = np.array([len(t) for t in tokenizer.encode([o.nucleotide for o in orfs])])
    flops = {"esm": module_shape(esm).flops_of(esm_lengths),
             "dnabert": module_shape(dnabert).flops_of(dn_lengths)}
    prefetch = prefetch_effect(models, orfs[:min(options.partition_rows, SAMPLE_ORFS)],
                               device=device)
    loads["prefetch"] = os.getloadavg()[0]
    peaks.append(matmul_peak(device, peak_dtype))
    shapes = {"esm": {**module_shape(esm).as_dict(), "heads": esm.heads},
              "dnabert": {**module_shape(dnabert).as_dict(),
                          "heads": dnabert.config.num_attention_heads}}
    del models, esm, dnabert
    _release(device)
    # The stage figures come from the run with the fewest workers (one worker has the
    # whole machine; more are normalised by their count, see stage_figures).
    first = min(scaling, key=lambda r: r["workers"])
    peak = max(peaks)
    stages = {m: stage_figures(first["embedding"][m], flops[m], peak, first["workers"])
              for m in flops}
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
        _release(device)
        original["interleaved"] = interleaved_speedup(paths, sample, device=device,
                                                      precision=precision)
        _release(device)
        # How busy the original way keeps the hardware, and so the most any implementation
        # can gain over it at this precision: its time over the same FLOPs at the peak.
        original["utilization"] = {
            m: flops[m] / original["timings_s"][m] / peak for m in flops}
        original["speedup_bound_embedding"] = sum(
            original["timings_s"][m] for m in flops) / (sum(flops.values()) / peak)
        original["speedup_bound_end_to_end"] = original["seconds"] / (
            sum(flops.values()) / peak)

    logger.info("precision agreement on %d ORFs", options.precision_orfs)
    precisions = precision_agreement(
        **paths, nucleotides=[o.nucleotide for o in orfs[:options.precision_orfs]],
        proteins=[o.protein for o in orfs[:options.precision_orfs]], device=device)

    padded = sum(first["embedding"][m]["padded_tokens"] for m in flops)
    real = sum(first["embedding"][m]["real_tokens"] for m in flops)
    result = {
        "matmul_peak_flops": peak,
        "esm_utilization": stages["esm"]["utilization"],
        "dnabert_utilization": stages["dnabert"]["utilization"],
        "padding_efficiency": real / padded,
        "pipeline_reads_per_s": best["reads_per_s"],
        "original_style_reads_per_s": original.get("reads_per_s"),
        "speedup_vs_original": (best["reads_per_s"] / original["reads_per_s"]
                                if original else None),
        "speedup_bound": original.get("speedup_bound_end_to_end"),
        "store_share": first["store_share"],
        "workers": best["workers"],
        "matmul_peak_samples": peaks,
        "device": str(device), "precision": precision, "peak_dtype": str(peak_dtype),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "input": fasta, "reads": reads, "orfs": len(orfs), "length": options.length,
        "size": options.size if not (options.esm_model or options.dnabert_model) else "given",
        "models": {**paths, "shapes": shapes},
        "partition_rows": options.partition_rows,
        "stages": stages, "prefetch": prefetch,
        "scaling": [{k: v for k, v in r.items() if k not in ("embedding", "out")}
                    for r in scaling],
        "scaling_ratio": (scaling[-1]["reads_per_s"] / scaling[0]["reads_per_s"]
                          if len(scaling) > 1 else None),
        "original_style": original, "precision_agreement": precisions,
        "load_average": loads, "bench_seconds": time.perf_counter() - t_start,
    }
    return result


def _stored_scores(out: str) -> np.ndarray:
    import zarr

    return zarr.open_group(str(Path(out) / STORE), mode="r")["scores"][:]


def _first_reads(src: Path, dest: Path, n: int) -> Path:
    """The first ``n`` records of ``src`` (plain FASTA) written to ``dest``."""
    from virnuc_dask.core.fasta import plan_blocks, read_block

    records = [r for block in plan_blocks([str(src)]) for r in read_block(block)][:n]
    with open(dest, "w") as fh:
        fh.writelines(f">{r.id}\n{r.sequence}\n" for r in records)
    return dest


def _fmt_rate(value: float | None, unit: str = "") -> str:
    return si(value, unit, missing="-")


def render(result: dict[str, Any]) -> Any:
    """The bench result as a rich table."""
    from rich.table import Table

    table = Table(title=f"virnuc-dask bench: {result['reads']} reads, {result['orfs']} ORFs, "
                  f"{result['device']} {result['precision']}, size {result['size']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("detail")
    add = table.add_row
    add("matmul peak", _fmt_rate(result["matmul_peak_flops"], "FLOP/s"),
        f"{result['peak_dtype']} GEMM, {result['torch_threads']} threads, best of "
        f"{len(result['matmul_peak_samples'])} samples (lowest "
        f"{_fmt_rate(min(result['matmul_peak_samples']), 'FLOP/s')})")
    for m, name in (("esm", "ESM-2"), ("dnabert", "DNABERT-S")):
        s = result["stages"][m]
        p = result["prefetch"][m]
        add(f"{name} stage", f"{s['utilization']:.0%} of peak",
            f"{_fmt_rate(s['tokens_per_s'], 'tok/s')}, {_fmt_rate(s['flop_per_s'], 'FLOP/s')}, "
            f"padding eff. {s['padding_efficiency']:.3f}, {s['batches']} batches"
            + (f", {s['workers']} workers at once" if s.get("workers", 1) > 1 else ""))
        add(f"{name} prefetch", f"x{p['ratio']:.2f}",
            f"{_fmt_rate(p['tokens_per_s_prefetch'], 'tok/s')} with, "
            f"{_fmt_rate(p['tokens_per_s_inline'], 'tok/s')} without; batch preparation "
            f"{p['prepare_share']:.1%} of the stage")
    add("padding efficiency", f"{result['padding_efficiency']:.3f}", "both stages")
    if result["store_share"] is not None:
        add("store beside embedding", f"{result['store_share']:.1%}",
            "of a partition's embed + write time is writing, done in a task of its own "
            "(the device is not held for it)")
    for r in result["scaling"]:
        add(f"predict, {r['workers']} worker(s)", f"{r['reads_per_s']:.1f} reads/s",
            f"{r['reads_per_s_per_worker']:.1f} reads/s per worker, {r['seconds']:.1f} s")
    if result["scaling_ratio"] is not None:
        add("scaling", f"x{result['scaling_ratio']:.2f}",
            f"{result['scaling'][-1]['workers']} vs {result['scaling'][0]['workers']} workers")
    o = result["original_style"]
    if o:
        add("original way", f"{o['reads_per_s']:.1f} reads/s",
            f"{o['seconds']:.1f} s (ESM-2 {o['timings_s']['esm']:.1f} s, DNABERT-S "
            f"{o['timings_s']['dnabert']:.1f} s); max score diff "
            f"{o['max_score_diff_vs_pipeline']:.1e}")
        add("speedup vs original", f"x{result['speedup_vs_original']:.2f}",
            f"predict on {result['workers']} worker(s)")
        u = o["utilization"]
        add("bound at peak", f"x{o['speedup_bound_end_to_end']:.2f}",
            f"original way's time over its FLOPs at the peak (embeddings only "
            f"x{o['speedup_bound_embedding']:.2f}); it runs ESM-2 at {u['esm']:.0%}, "
            f"DNABERT-S at {u['dnabert']:.0%} of peak")
        i = o["interleaved"]
        add("embedding speedup", f"x{i['embedding_speedup']:.2f}",
            f"ESM-2 x{i['esm_speedup']:.2f}, DNABERT-S x{i['dnabert_speedup']:.2f}: "
            f"{i['orfs']} ORFs, both ways alternating")
    for name, p in result["precision_agreement"].items():
        if "error" in p:
            add(f"{name} vs fp32", "n/a", p["error"])
            continue
        add(f"{name} vs fp32", f"{p['labels_flipped']}/{p['orfs']} flipped",
            f"cosine ESM-2 min {p['esm_cosine_min']:.5f} mean {p['esm_cosine_mean']:.5f}; "
            f"DNABERT-S min {p['dnabert_cosine_min']:.5f} mean {p['dnabert_cosine_mean']:.5f}")
    loads = result["load_average"]
    add("bench time", f"{result['bench_seconds']:.0f} s",
        f"1-min load average {min(loads.values()):.1f}-{max(loads.values()):.1f} on "
        f"{result['cpu_count']} cores (other processes disturb timings)")
    return table
