"""How long the embedding of an input would take on this machine: model FLOPs of its
ORFs (``models.flops``) over a measured matrix-multiply rate, at an assumed share of it.

No CUDA context is created in this process (it would hold a GPU that the run's workers
then share, or cannot use at all on EXCLUSIVE_PROCESS nodes): the GPUs and their compute
capability come from NVML, and a GPU's matmul rate is measured by a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virnuc_dask.config import Settings
from virnuc_dask.models.flops import dnabert_source_shape, esm_source_shape, matmul_peak
from virnuc_dask.worker.precision import DTYPES, auto_for_capability

SAMPLE_FOR_TOKENIZER = 2000  # ORFs whose DNABERT-S tokens are counted exactly
DNABERT_BP_PER_TOKEN = 4.76
ASSUMED_UTILIZATION = 0.5
# Bound on the child process that measures a GPU's matmul rate (CUDA start included).
PEAK_CHILD_TIMEOUT_S = 300.0
PEAK_CHILD = (
    "import json, sys, torch; from virnuc_dask.models.flops import matmul_peak; "
    "print(json.dumps(matmul_peak('cuda', getattr(torch, sys.argv[1]), repeats=1, rounds=2)))"
)


def dnabert_tokens(
    source: str,
    sample: Sequence[str],
    bases: int,
    bases_sq: int,
    orfs: int,
    model_cache: str | None = None,
) -> tuple[float, float, str]:
    """Estimated DNABERT-S tokens ``(sum n, sum n^2, how)``: bp per token measured with the
    model's own tokenizer on a sample of ORFs when it is on this machine, else the default."""
    ratio, how = DNABERT_BP_PER_TOKEN, f"{DNABERT_BP_PER_TOKEN} bp/token (published tokenizer)"
    path = Path(source) / "tokenizer.json" if Path(source).is_dir() else None
    if path is not None and path.is_file() and sample:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        encoded = tokenizer.encode_batch(list(sample))
        inner = sum(len(e.ids) - 2 for e in encoded)
        if inner > 0:
            ratio = sum(map(len, sample)) / inner
            how = f"{ratio:.2f} bp/token (its tokenizer, {len(sample):,} ORFs sampled)"
    tokens = bases / ratio + 2 * orfs
    tokens_sq = bases_sq / ratio**2 + 4 * bases / ratio + 4 * orfs
    return tokens, tokens_sq, how


def _hardware(settings: Settings) -> tuple[str, str, int, str | None]:
    """(device, precision, devices, GPU) a run with ``settings`` would use on this
    machine, from NVML (no CUDA call here)."""
    from virnuc_dask.cluster.workers import visible_gpus
    from virnuc_dask.worker.device import nvml_capability

    gpus = [] if settings.device == "cpu" else visible_gpus(settings.gpus)
    capability = nvml_capability(gpus[0]) if gpus else None
    if capability is None:
        return "cpu", "fp32", 1, None
    precision = settings.precision
    if precision == "auto":
        precision = auto_for_capability(capability[0])
    return "cuda", precision, len(gpus), gpus[0]


def gpu_matmul_peak(gpu: str, dtype: str) -> float:
    """The matmul rate of GPU ``gpu`` (a ``CUDA_VISIBLE_DEVICES`` entry) in ``dtype``
    (``bfloat16``...), measured by a child process: its CUDA context ends with it."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, dtype],
        capture_output=True,
        text=True,
        env=env,
        timeout=PEAK_CHILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise RuntimeError(f"measuring the matmul rate of GPU {gpu} failed: {lines[-1]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def estimate(files: Sequence[Any], settings: Settings) -> dict[str, Any]:
    """Model FLOPs of all ORFs and the time they take at the measured matmul rate."""
    esm = esm_source_shape(settings.esm_model)
    dnabert = dnabert_source_shape(settings.dnabert_model, settings.model_cache)
    missing = [name for name, shape in (("ESM-2", esm), ("DNABERT-S", dnabert)) if shape is None]
    if missing:
        return {
            "error": f"shape of {' and '.join(missing)} unknown here (not a published "
            f"name and not a local file); pass --esm-model/--dnabert-model"
        }
    orfs = sum(f.orfs for f in files)
    esm_flops = esm.flops(sum(f.esm_tokens for f in files), sum(f.esm_tokens_sq for f in files))
    sample = [s for f in files for s in f.sample][:SAMPLE_FOR_TOKENIZER]
    dn_tokens, dn_sq, how = dnabert_tokens(
        settings.dnabert_model,
        sample,
        sum(f.nucleotide_bases for f in files),
        sum(f.nucleotide_sq for f in files),
        orfs,
        settings.model_cache,
    )
    dn_flops = dnabert.flops(dn_tokens, dn_sq)
    device, precision, devices, gpu = _hardware(settings)
    dtype = DTYPES[precision]
    if gpu is None:
        peak = matmul_peak(device, dtype, repeats=1, rounds=2)
    else:
        try:
            peak = gpu_matmul_peak(gpu, str(dtype).removeprefix("torch."))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return {"error": f"{exc}; no estimate (run `virnuc-dask doctor` on this node)"}
    total = esm_flops + dn_flops
    floor = total / (peak * devices)
    return {
        "esm_model": settings.esm_model,
        "esm_shape": esm.name,
        "dnabert_model": settings.dnabert_model,
        "dnabert_shape": dnabert.name,
        "esm_tokens": sum(f.esm_tokens for f in files),
        "dnabert_tokens": round(dn_tokens),
        "dnabert_tokens_from": how,
        "esm_flops": esm_flops,
        "dnabert_flops": dn_flops,
        "flops": total,
        "device": device,
        "devices": devices,
        "precision": precision,
        "matmul_flops_per_s": peak,
        "seconds_at_peak": floor,
        "assumed_utilization": ASSUMED_UTILIZATION,
        "seconds_expected": floor / ASSUMED_UTILIZATION,
    }
