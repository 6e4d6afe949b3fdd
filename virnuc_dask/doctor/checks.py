"""``virnuc-dask doctor``: is this node (GPU or CPU) fit for a long run? One check each.

Checks, in order (keys of the JSON document):

``torch``     torch build, its CUDA and cuDNN versions, the NVIDIA driver (NVML).
``disk``      free space at ``--out``.
``models``    model files given with ``--esm-model``/``--dnabert-model``/``--classifier``:
              loaded, and the classifier's input width equal to the embedding widths.
``checkpoint`` the given ``--esm-model`` checkpoint (and its contact-regression file):
              every global its pickle names is one the safe loader allows, scanned
              without loading it (a file that is not would fail at load on every worker).
``cluster``   the cluster a run would start here (``LocalCUDACluster`` where NVML sees
              GPUs, else ``LocalCluster``), started; ``dask_cuda`` imported only then.
``gpus``      GPUs NVML lists against the devices torch can use (on a worker).
``devices``   per worker: device name, compute capability, memory, the precision
              ``auto`` picks, fp32 and bf16 matmul rates.
``sdpa``      attention kernels on ESM-2 3B and DNABERT-S shapes with padding, in each
              precision the device runs: the kernels that accept them and the largest
              difference of the default choice from the math kernel; on a GPU, fails
              where no fused kernel (flash, memory-efficient, cuDNN) takes them: the
              run's attention would silently fall back to the math kernel.
``precision`` per worker, each half precision against fp32 on random models of a bench
              layout (tiny on CPU, the 650M layout on GPU): cosine similarity, ORF
              labels and read calls flipped, speed against fp32 (:mod:`.precision_table`).
``predict``   one partition of a packaged input through ``predict`` (fp32) with the
              demonstration models, on that cluster: every worker on the device it
              was started for, in fp32 with TF32 off, scores equal to the packaged
              golden case within 1e-5.

No CUDA call is made in this process: everything that touches a device runs on
the workers. A check passes on a machine without GPUs when it has nothing to do
there, and says "no GPU".

What the workers measure is :mod:`.device_report`; the golden case and its check,
:mod:`.golden_case`; each check's result, a :class:`.check_result.Check`.

>>> from virnuc_dask.cli.main import main
>>> main(["doctor", "--out", "/tmp/doctor"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from virnuc_dask.doctor.check_result import Check
from virnuc_dask.doctor.device_report import NOT_APPLICABLE, device_report
from virnuc_dask.doctor.golden_case import check_predict
from virnuc_dask.doctor.precision_table import table_text
from virnuc_dask.formatting import si
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS, MODEL_NAMES

logger = logging.getLogger(__name__)

MIN_FREE_BYTES = 10 * 2**30
NO_GPU = "no GPU"


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


def check_models(sources: Mapping[str, str | None], classifier: str | None) -> Check:
    """Load the given model files (on the CPU) and compare their widths; ``sources``: the
    embedding models given, by their setting (``esm_model``, ...)."""
    given = {
        m: sources[m.source_setting] for m in EMBEDDING_MODELS if sources.get(m.source_setting)
    }
    if not (given or classifier):
        flags = ", ".join(f"--{m.source_setting.replace('_', '-')}" for m in EMBEDDING_MODELS)
        return Check("models", True, f"none given ({flags}, --classifier)")
    from virnuc_dask.errors import ModelLoadError
    from virnuc_dask.models.classifier import load_classifier

    widths: dict[str, int] = {}
    try:
        for m, source in given.items():
            widths[m.key] = m.load_adapter(source, offline=True).width
        if classifier:
            widths["classifier_input"] = load_classifier(classifier).input_dim
    except (ModelLoadError, OSError) as exc:
        return Check("models", False, f"cannot load: {exc}", {"widths": widths})
    text = ", ".join(f"{k} {v}" for k, v in widths.items())
    ok = True
    if {*MODEL_KEYS, "classifier_input"} <= set(widths):
        ok = widths["classifier_input"] == sum(widths[k] for k in MODEL_KEYS)
        names = " + ".join(MODEL_NAMES.values())
        text += f" = {names}" if ok else f" != {names}: the classifier does not fit these models"
    return Check("models", ok, text, {"widths": widths})


def check_checkpoint(esm_model: str | None, model_cache: str | None = None) -> Check:
    """The globals the ESM-2 checkpoint's pickles name, against what the safe loader
    allows for it (:mod:`virnuc_dask.models.checkpoint_scan`); nothing is loaded."""
    if not esm_model:
        return Check("checkpoint", True, "no --esm-model given")
    from virnuc_dask.models.checkpoint_scan import disallowed_globals
    from virnuc_dask.models.esm2 import CHECKPOINT_CLASSES, hub_dir, is_local_model

    path = Path(esm_model).expanduser() if is_local_model(esm_model) else None
    if path is None:
        path = hub_dir(model_cache) / f"{esm_model}.pt"
        if not path.is_file():
            return Check("checkpoint", True, f"{esm_model}: not on this node yet ({path})")
    files = [path, path.with_name(path.stem + "-contact-regression.pt")]
    found: dict[str, list[str]] = {}
    for file in (f for f in files if f.is_file()):
        try:
            found[str(file)] = disallowed_globals(file, CHECKPOINT_CLASSES)
        except (OSError, ValueError, EOFError) as exc:  # not a pickle stream at all
            return Check("checkpoint", False, f"{file}: cannot be scanned: {exc}")
    if not found:
        return Check("checkpoint", False, f"{path}: not found")
    bad = {f: names for f, names in found.items() if names}
    if bad:
        text = "; ".join(
            f"{f} names {', '.join(names)}, which the safe loader does not allow: the "
            "models would not load (a checkpoint from another source, or tampered with)"
            for f, names in bad.items()
        )
        return Check("checkpoint", False, text, {"disallowed": bad})
    return Check(
        "checkpoint",
        True,
        f"{', '.join(Path(f).name for f in found)}: every pickled global allowed",
        {"scanned": list(found)},
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
        sweeps = r.get("matmul_sweeps", {})
        rate = ", ".join(
            f"{k} {si(v, 'FLOP/s', missing='-')}"
            + (f" (±{sweeps[k]['spread']:.0%})" if k in sweeps else "")
            if isinstance(v, float)
            else f"{k} {v}"
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
    for key, entry in first.get("sdpa", {}).items():
        sdpa_lines.append(
            f"{key} unsupported"
            if "error" in entry
            else f"{key} {'/'.join(entry['usable'])} {entry['max_diff_vs_math']:.1e}"
            + (" MATH ONLY (no fused kernel takes it)" if entry.get("fused") is False else "")
        )
    fused = {e.get("fused") for e in first.get("sdpa", {}).values() if "error" not in e}
    sdpa = Check(
        "sdpa",
        sdpa_ok,
        "kernels and max difference from math: "
        + ", ".join(sdpa_lines)
        + (f"; fallback to the math kernel {NOT_APPLICABLE}" if NOT_APPLICABLE in fused else ""),
        {"workers": {a: r.get("sdpa") for a, r in reports.items()}},
    )
    tables = {a: r["precision_table"] for a, r in reports.items() if "precision_table" in r}
    precision = Check(
        "precision",
        not errors and bool(tables),
        "; ".join(f"{a}: {table_text(t)}" for a, t in sorted(tables.items()))
        or "no worker measured it",
        {"workers": tables},
    )
    return [gpus, device_check, sdpa, precision]


def run_checks(
    *,
    out: Path,
    models: Mapping[str, str | None] | None = None,
    classifier: str | None = None,
    quick: bool = False,
    on_check: Callable[[Check], None] = lambda check: None,
) -> list[Check]:
    """Every check; ``on_check`` is called as each finishes (for a live report).
    ``models``: the embedding models given, by their setting (``esm_model``, ...)."""
    from virnuc_dask.cluster.start import open_client
    from virnuc_dask.cluster.workers import visible_gpus
    from virnuc_dask.config import load_settings

    checks: list[Check] = []

    def done(check: Check) -> None:
        checks.append(check)
        on_check(check)

    done(check_torch())
    done(check_disk(out))
    done(check_models(models or {}, classifier))
    done(check_checkpoint((models or {}).get("esm_model")))
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
