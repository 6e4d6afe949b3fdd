"""What each worker of a ``virnuc-dask doctor`` cluster reports about its device: NVML
against torch, the device's name, compute capability and memory, the precision ``auto``
picks there, matmul rates, the attention kernels that accept the models' padded
shapes with their difference from the math kernel (and, on a GPU, whether a fused
kernel takes them at all: otherwise attention silently falls back to the math kernel,
whose memory grows with the square of the length), and the precision agreement table
(:mod:`.precision_table`). Runs on the worker; no CUDA call is made in the process
that asks."""

from __future__ import annotations

from typing import Any

SDPA_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 4e-3}
# The kernels that are not the math one (a GPU's fused attention).
FUSED = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
NOT_APPLICABLE = "not applicable on CPU"


def device_report(*, quick: bool = False) -> dict[str, Any]:
    """This worker's view: NVML vs torch, its device, the precision auto picks, rates."""
    import torch

    from virnuc_dask.models.flops import peak_sweep
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
    if device.type == "cpu":
        sizes = (256, 512) if quick else (512, 1024, 2048)
    else:
        sizes = (2048,) if quick else (4096, 8192)
    rates: dict[str, Any] = {}
    sweeps: dict[str, Any] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        try:
            sweep = peak_sweep(device, dtype, sizes=sizes, rounds=2 if quick else 3)
        except RuntimeError as exc:
            rates[name] = f"unsupported: {str(exc).splitlines()[0][:60]}"
            continue
        rates[name] = sweep.peak
        sweeps[name] = sweep.as_dict()
    out["matmul_flops"] = rates
    out["matmul_sweeps"] = sweeps
    out["sdpa"] = sdpa_report(device, quick=quick)
    from virnuc_dask.doctor.precision_table import precision_table

    out["precision_table"] = precision_table(device, quick=quick)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _alibi_bias(batch: int, heads: int, length: int, pad: int, dtype) -> Any:
    import torch

    from virnuc_dask.models.dnabert_encoder import build_alibi

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
    from virnuc_dask.models.registry import EMBEDDING_MODELS

    shapes = {m.key: m.attention for m in EMBEDDING_MODELS}
    precisions = ("fp32", "bf16", "fp16")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    report: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    for model, (heads, padding) in shapes.items():
        q, k, v = (torch.randn(batch, heads, length, 64, generator=gen) for _ in range(3))
        for precision in precisions:
            dtype = dtypes[precision]
            args = [t.to(device, dtype) for t in (q, k, v)]
            if padding == "key mask":
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
                fused = fused_kernel(device, args, mask)
                entry = {
                    "usable": usable,
                    "max_diff_vs_math": float(diff.max()),
                    "fused": fused,
                    "ok": bool(torch.isfinite(default[..., real, :]).all())
                    and float(diff.max()) <= SDPA_TOLERANCE[precision]
                    and fused is not False,
                }
            report[f"{model}/{precision}"] = entry
    return report


def fused_kernel(device: Any, args: list[Any], mask: Any) -> bool | str:
    """Whether attention on ``args`` runs in a fused kernel when only those are allowed
    (a GPU); :data:`NOT_APPLICABLE` on a CPU, whose attention has no such fallback."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type != "cuda":
        return NOT_APPLICABLE
    try:
        with torch.inference_mode(), sdpa_kernel([getattr(SDPBackend, k) for k in FUSED]):
            F.scaled_dot_product_attention(*args, attn_mask=mask)
    except RuntimeError:
        return False
    return True
