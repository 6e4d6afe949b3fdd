"""``virnuc-dask doctor``: is this node (GPU or CPU) fit for a long run? One check each.

Checks, in order (keys of the JSON document):

``torch``     torch build, its CUDA and cuDNN versions, the NVIDIA driver (NVML).
``disk``      free space at ``--out``.
``models``    model files given with ``--esm-model``/``--dnabert-model``/``--classifier``:
              loaded, and the classifier's input width equal to the embedding widths.
``cluster``   the cluster a run would start here (``LocalCUDACluster`` where NVML sees
              GPUs, else ``LocalCluster``), started; ``dask_cuda`` imported only then.
``gpus``      GPUs NVML lists against the devices torch can use (on a worker).
``devices``   per worker: device name, compute capability, memory, the precision
              ``auto`` picks, fp32 and bf16 matmul rates.
``sdpa``      attention kernels on ESM-2 3B and DNABERT-S shapes with padding, in each
              precision the device runs: the kernels that accept them and the largest
              difference of the default choice from the math kernel.
``predict``   one partition of a packaged input through ``predict`` (fp32) with the
              demonstration models, on that cluster: every worker on the device it
              was started for, in fp32 with TF32 off, scores equal to the packaged
              golden case within 1e-5.

No CUDA call is made in this process: everything that touches a device runs on
the workers. A check passes on a machine without GPUs when it has nothing to do
there, and says "no GPU".

>>> from virnuc_dask.cli.main import main
>>> main(["doctor", "--out", "/tmp/doctor"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from virnuc_dask.formatting import si

logger = logging.getLogger(__name__)

GOLDEN = "golden"  # package data directory beside this module
GOLDEN_READS = 24
SCORE_TOLERANCE = 1e-5
MIN_FREE_BYTES = 10 * 2**30
SDPA_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 4e-3}
NO_GPU = "no GPU"


@dataclasses.dataclass
class Check:
    """One line of the report: ``key``, passed or not, the figure in words, details."""

    key: str
    ok: bool
    text: str
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "text": self.text, **self.detail}


# -- checks in this process (no CUDA) -------------------------------------------------------


def check_torch() -> Check:
    import torch

    from virnuc_dask.worker.device import nvml_facts

    gpus, driver, error = nvml_facts()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    text = (
        f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU-only)'}, "
        f"cuDNN {cudnn or 'none'}; driver {driver or NO_GPU}"
    )
    ok = not (gpus and torch.version.cuda is None)
    if not ok:
        text += f"; NVML lists {gpus} GPU(s) but this torch cannot use them: install a CUDA build"
    return Check(
        "torch",
        ok,
        text,
        {
            "torch": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cudnn": cudnn,
            "driver": driver,
            "nvml_gpus": gpus,
            "nvml_error": error,
        },
    )


def check_disk(out: Path, *, minimum: int = MIN_FREE_BYTES) -> Check:
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    return Check(
        "disk",
        free >= minimum,
        f"{free / 2**30:.1f} GiB free at {out} (at least {minimum / 2**30:.0f} GiB)",
        {"free_bytes": free, "path": str(out)},
    )


def check_models(esm_model: str | None, dnabert_model: str | None, classifier: str | None) -> Check:
    """Load the given model files (on the CPU) and compare their widths."""
    if not (esm_model or dnabert_model or classifier):
        return Check("models", True, "none given (--esm-model, --dnabert-model, --classifier)")
    from virnuc_dask.errors import ModelLoadError
    from virnuc_dask.models.classifier import load_classifier
    from virnuc_dask.models.dnabert import load_dnabert
    from virnuc_dask.models.esm2 import load_esm

    widths: dict[str, int] = {}
    try:
        if esm_model:
            widths["esm"] = load_esm(esm_model, offline=True)[0].embed_dim
        if dnabert_model:
            widths["dnabert"] = load_dnabert(dnabert_model, offline=True)[0].hidden_size
        if classifier:
            widths["classifier_input"] = load_classifier(classifier).input_dim
    except (ModelLoadError, OSError) as exc:
        return Check("models", False, f"cannot load: {exc}", {"widths": widths})
    text = ", ".join(f"{k} {v}" for k, v in widths.items())
    ok = True
    if {"esm", "dnabert", "classifier_input"} <= set(widths):
        ok = widths["classifier_input"] == widths["esm"] + widths["dnabert"]
        text += (
            " = DNABERT-S + ESM-2"
            if ok
            else " != DNABERT-S + ESM-2: the classifier does not fit these models"
        )
    return Check("models", ok, text, {"widths": widths})


# -- run on each worker ----------------------------------------------------------------------


def device_report(*, quick: bool = False) -> dict[str, Any]:
    """This worker's view: NVML vs torch, its device, the precision auto picks, rates."""
    import torch

    from virnuc_dask.models.flops import matmul_peak
    from virnuc_dask.worker import device as devices
    from virnuc_dask.worker.precision import resolve_precision

    facts = devices.probe()
    out: dict[str, Any] = {
        "nvml_gpus": facts.nvml_gpus,
        "torch_devices": facts.cuda_devices,
        "visible": facts.visible,
        "cuda_available": facts.cuda_available,
    }
    try:
        device = devices.decide("auto", facts)
    except devices.DeviceError as exc:
        out["error"] = str(exc)
        return out
    if device.type == "cuda":
        device = torch.device("cuda", 0)  # a worker's own GPU comes first in its list
    out.update(devices.describe_device(device))
    out["precision_auto"] = resolve_precision("auto", device)
    size = (512 if quick else 1024) if device.type == "cpu" else 8192
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        try:
            rates[name] = matmul_peak(device, dtype, size=size, repeats=2, rounds=2)
        except RuntimeError as exc:
            rates[name] = f"unsupported: {str(exc).splitlines()[0][:60]}"
    out["matmul_flops"] = rates
    out["sdpa"] = sdpa_report(device, quick=quick)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _alibi_bias(batch: int, heads: int, length: int, pad: int, dtype) -> Any:
    import torch

    from virnuc_dask.models.dnabert import build_alibi

    bias = build_alibi(length, heads).to(dtype).unsqueeze(0).repeat(batch, 1, 1, 1)
    bias[1:, :, :, length - pad :] = torch.finfo(dtype).min
    return bias


def sdpa_report(device: Any, *, quick: bool = False) -> dict[str, Any]:
    """Attention on ESM-2 3B (40 heads, boolean key mask) and DNABERT-S (12 heads, ALiBi
    bias) shapes of padded batches: the kernels that accept each, and the largest
    difference of the default choice from the math kernel, per precision."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, length, pad = (2, 96, 40) if quick or device.type == "cpu" else (8, 512, 200)
    shapes = {"esm": 40, "dnabert": 12}
    precisions = ("fp32", "bf16", "fp16")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    report: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    for model, heads in shapes.items():
        q, k, v = (torch.randn(batch, heads, length, 64, generator=gen) for _ in range(3))
        for precision in precisions:
            dtype = dtypes[precision]
            args = [t.to(device, dtype) for t in (q, k, v)]
            if model == "esm":
                mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
                mask[1:, ..., length - pad :] = False
                mask = mask.to(device)
            else:
                mask = _alibi_bias(batch, heads, length, pad, dtype).to(device)
            entry: dict[str, Any] = {}
            try:
                with torch.inference_mode():
                    default = F.scaled_dot_product_attention(*args, attn_mask=mask)
                    with sdpa_kernel([SDPBackend.MATH]):
                        math = F.scaled_dot_product_attention(*args, attn_mask=mask)
                    usable = []
                    for backend in (
                        SDPBackend.FLASH_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH,
                    ):
                        try:
                            with sdpa_kernel([backend]):
                                F.scaled_dot_product_attention(*args, attn_mask=mask)
                            usable.append(backend.name.lower())
                        except RuntimeError:
                            continue
            except RuntimeError as exc:
                entry = {"error": str(exc).splitlines()[0][:100]}
            else:
                real = slice(0, length - pad)  # query rows every sequence has
                diff = (default[..., real, :].float() - math[..., real, :].float()).abs()
                entry = {
                    "usable": usable,
                    "max_diff_vs_math": float(diff.max()),
                    "ok": bool(torch.isfinite(default[..., real, :]).all())
                    and float(diff.max()) <= SDPA_TOLERANCE[precision],
                }
            report[f"{model}/{precision}"] = entry
    return report


# -- the golden case ---------------------------------------------------------------------------


def golden_dir() -> Path:
    return Path(str(resources.files("virnuc_dask.tools") / GOLDEN))


def model_digests(paths: dict[str, Path]) -> dict[str, str]:
    """SHA-256 of each model's tensors (names, shapes, bytes), independent of file layout."""
    import torch

    from virnuc_dask.models.classifier import load_classifier
    from virnuc_dask.models.dnabert import load_dnabert
    from virnuc_dask.models.esm2 import load_esm

    models = {
        "esm": load_esm(str(paths["esm"]))[0],
        "dnabert": load_dnabert(str(paths["dnabert"]))[0],
        "classifier": load_classifier(str(paths["classifier"])),
    }
    out = {}
    for name, model in models.items():
        digest = hashlib.sha256()
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


def write_golden(directory: Path, work: Path, client) -> None:
    """Make the golden case: the packaged input, the demonstration models' digests and the
    scores ``predict`` gives in fp32. Run once by the project; the result is package data."""
    from virnuc_dask.tools.demo import build_demo, example_reads, write_fasta

    directory.mkdir(parents=True, exist_ok=True)
    write_fasta(directory / "input.fa", example_reads(GOLDEN_READS, max_length=600))
    paths = build_demo(work)
    result = _predict(directory / "input.fa", paths, work / "out", client)
    shutil.copy(result / "prediction_results.txt", directory / "prediction_results.txt")
    (directory / "models.json").write_text(json.dumps(model_digests(paths), indent=2) + "\n")


def _predict(fasta: Path, paths: dict[str, Path], out: Path, client) -> Path:
    from virnuc_dask.config import load_settings
    from virnuc_dask.dataflow.pipeline import predict

    settings = load_settings(
        inputs=[str(fasta)],
        overrides={
            "out": str(out),
            "length": 300,
            "esm_model": str(paths["esm"]),
            "dnabert_model": str(paths["dnabert"]),
            "classifier": str(paths["classifier"]),
            "precision": "fp32",
            "offline": True,
            "overwrite": True,
            "partition_rows": 4096,
        },
    )
    predict(settings, client)
    return out


def _scores(path: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [f"{r[0]}\t{r[1]}" for r in rows], np.array([[float(r[2]), float(r[3])] for r in rows])


def check_predict(client, work: Path, *, gpus: bool) -> Check:
    """One partition through ``predict`` on ``client``'s cluster, against the golden case."""
    from virnuc_dask.tools.demo import build_demo

    golden = golden_dir()
    paths = build_demo(work / "demo")
    expected_models = json.loads((golden / "models.json").read_text())
    if model_digests(paths) != expected_models:
        return Check(
            "predict",
            False,
            "the demonstration models built here differ from "
            "those of the golden case (a different torch build?)",
        )
    t = time.perf_counter()
    out = _predict(golden / "input.fa", paths, work / "predict", client)
    seconds = time.perf_counter() - t
    summary = json.loads((out / "run_summary.json").read_text())
    labels, scores = _scores(out / "prediction_results.txt")
    want_labels, want = _scores(golden / "prediction_results.txt")
    diff = float(np.abs(scores - want).max()) if scores.shape == want.shape else float("inf")
    workers = {
        a: {k: w.get(k) for k in ("device", "precision", "device_name", "tf32")}
        for a, w in summary["workers"].items()
        if "device" in w
    }
    wrong = [
        f"{a}: {w['device']} {w['precision']}"
        for a, w in workers.items()
        if w["precision"] != "fp32" or w["device"].startswith("cuda") != gpus
    ]
    tf32_on = [a for a, w in workers.items() if not (w["tf32"] or {}).get("tf32_off")]
    ok = (
        labels == want_labels
        and diff <= SCORE_TOLERANCE
        and not wrong
        and not tf32_on
        and workers
        and not summary["workers_failed"]
    )
    text = (
        f"{len(labels)} ORFs, max score difference {diff:.1e} from the golden case "
        f"(at most {SCORE_TOLERANCE:.0e}), {len(workers)} worker(s) on "
        f"{', '.join(sorted({w['device'] for w in workers.values()})) or 'none'} in fp32, "
        f"TF32 {'on at ' + ', '.join(tf32_on) if tf32_on else 'off'}; {seconds:.1f} s"
    )
    if wrong:
        text += f"; not as started: {'; '.join(wrong)}"
    if summary["workers_failed"]:
        text += "; failed: " + "; ".join(f["error"] for f in summary["workers_failed"])
    return Check(
        "predict",
        bool(ok),
        text,
        {"max_score_diff": diff, "workers": workers, "workers_failed": summary["workers_failed"]},
    )


# -- checks on the cluster --------------------------------------------------------------------


def _worker_checks(reports: dict[str, dict[str, Any]]) -> list[Check]:
    first = next(iter(reports.values()))
    nvml, usable = first["nvml_gpus"], first["torch_devices"]
    errors = [f"{a}: {r['error']}" for a, r in reports.items() if "error" in r]
    if nvml == 0 and not first.get("visible"):
        gpus = Check("gpus", not errors, f"{NO_GPU} (NVML lists none)")
    else:
        ok = (
            usable >= min(nvml, len(first.get("visible") or ())) > 0
            if first.get("visible")
            else usable == nvml
        )
        gpus = Check(
            "gpus",
            ok and not errors,
            f"NVML lists {nvml} GPU(s), torch can use {usable} on a worker"
            + ("" if ok else ": some GPUs are unusable to this torch build"),
            {"nvml": nvml, "torch": usable},
        )
    lines, ok = [], not errors
    for address, r in sorted(reports.items()):
        if "error" in r:
            lines.append(f"{address}: {r['error']}")
            continue
        rates = r["matmul_flops"]
        rate = ", ".join(
            f"{k} {si(v, 'FLOP/s', missing='-')}" if isinstance(v, float) else f"{k} {v}"
            for k, v in rates.items()
        )
        if r["device"] == "cpu":
            lines.append(f"{address}: {NO_GPU} (cpu; auto picks {r['precision_auto']}; {rate})")
        else:
            lines.append(
                f"{address}: {r['name']} (compute {r['capability']}, "
                f"{r['memory_bytes'] / 2**30:.0f} GiB; auto picks "
                f"{r['precision_auto']}; {rate})"
            )
    device_check = Check("devices", ok, "; ".join(lines), {"workers": reports})
    # A precision a device cannot compute at all (an "error" entry) is reported, not
    # failed: the run would not pick it there.
    sdpa_ok = not errors and all(
        entry.get("ok", True) for r in reports.values() for entry in r.get("sdpa", {}).values()
    )
    sdpa_lines = []
    for key, entry in next(iter(reports.values())).get("sdpa", {}).items():
        sdpa_lines.append(
            f"{key} unsupported"
            if "error" in entry
            else f"{key} {'/'.join(entry['usable'])} {entry['max_diff_vs_math']:.1e}"
        )
    sdpa = Check(
        "sdpa",
        sdpa_ok,
        "kernels and max difference from math: " + ", ".join(sdpa_lines),
        {"workers": {a: r.get("sdpa") for a, r in reports.items()}},
    )
    return [gpus, device_check, sdpa]


def run_checks(
    *,
    out: Path,
    esm_model: str | None = None,
    dnabert_model: str | None = None,
    classifier: str | None = None,
    quick: bool = False,
    on_check: Callable[[Check], None] = lambda check: None,
) -> list[Check]:
    """Every check; ``on_check`` is called as each finishes (for a live report)."""
    from virnuc_dask.cluster.start import open_client
    from virnuc_dask.cluster.workers import visible_gpus
    from virnuc_dask.config import load_settings

    checks: list[Check] = []

    def done(check: Check) -> None:
        checks.append(check)
        on_check(check)

    done(check_torch())
    done(check_disk(out))
    done(check_models(esm_model, dnabert_model, classifier))
    gpus = visible_gpus()
    done(check_dask_cuda(gpus))
    work = Path(tempfile.mkdtemp(prefix="doctor-", dir=out))
    settings = load_settings(inputs=[], overrides={"out": str(work / "predict")})
    try:
        started = time.perf_counter()
        try:
            context = open_client(settings)
            client = context.__enter__()
        except (ImportError, RuntimeError, OSError) as exc:
            done(Check("cluster", False, f"cannot start a local cluster: {exc}"))
            return checks
        try:
            kind = "LocalCUDACluster" if gpus else "LocalCluster"
            n = len(client.scheduler_info(n_workers=-1)["workers"])
            done(
                Check(
                    "cluster",
                    n > 0,
                    f"{kind}, {n} worker(s) "
                    f"({'one per GPU' if gpus else NO_GPU}), started in "
                    f"{time.perf_counter() - started:.1f} s",
                    {"type": kind, "workers": n},
                )
            )
            reports = client.run(device_report, quick=quick)
            for check in _worker_checks(reports):
                done(check)
            done(check_predict(client, work, gpus=bool(gpus)))
        finally:
            context.__exit__(None, None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return checks


def check_dask_cuda(gpus: list[str]) -> Check:
    """``import dask_cuda``, where GPUs need it."""
    if not gpus:
        return Check("dask_cuda", True, f"{NO_GPU}: not needed")
    try:
        import dask_cuda
    except ImportError as exc:
        return Check(
            "dask_cuda", False, f"cannot import dask_cuda ({exc}): pip install 'virnuc-dask[gpu]'"
        )
    return Check(
        "dask_cuda", True, f"dask_cuda {dask_cuda.__version__}", {"version": dask_cuda.__version__}
    )


def report(checks: list[Check]) -> dict[str, Any]:
    """The JSON document: one key per check, and ``ok``."""
    return {"ok": all(c.ok for c in checks), **{c.key: c.as_dict() for c in checks}}
