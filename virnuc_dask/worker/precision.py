"""Embedding precision: what ``auto`` picks, fp32 pinned to IEEE, half-precision fallbacks.

- :func:`resolve_precision` picks ``fp32``/``bf16``/``fp16`` for a device.
- :func:`pin_fp32` turns TF32 off for an fp32 run (cuBLAS, cuDNN, torch's float32
  matmul precision, and cuBLAS's own ``NVIDIA_TF32_OVERRIDE``), whatever the site
  set: fp32 is the precision that reproduces the original to 1e-5, and TF32 keeps
  only 10 mantissa bits. :func:`matmul_state` reads the flags back for the run summary.
- :func:`computing_in_fp32` runs a half-precision model in fp32 for a few records
  (an fp16 overflow): each module with weights is converted to fp32 just before it
  runs and back right after. fp16 -> fp32 -> fp16 is exact, so the model is
  unchanged afterwards, and at most one module's fp32 copy exists at a time.
- :func:`to_mixed` keeps ``nn.Linear`` weights in bf16 and computes them in bf16,
  while everything else (embeddings, LayerNorm, the residual stream, attention)
  stays fp32: autocast-style mixed precision with bf16 weight memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *DTYPES)
TF32_ENV = ("NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The embedding precision for ``device``; ``auto`` picks by what the device computes fast.

    - CUDA compute capability >= 8.0 (Ampere, Hopper, ...): ``bf16``. Tensor cores run
      bf16 at the fp16 rate and its exponent range is fp32's, so nothing can overflow.
    - CUDA 7.x (Volta V100, Turing T4): ``fp16``. These GPUs have fp16 tensor cores
      (V100: 125 TFLOP/s fp16 against 15.7 fp32) but no bf16. fp16 carries three more
      mantissa bits than bf16, and on the reference cases it agrees with fp32 at least
      as closely as bf16 (``tests/test_precision.py``, ``virnuc-dask bench``: cosine
      similarity, ORF labels flipped). Its risk is overflow above 65504; a record whose
      embedding comes out non-finite is computed again in fp32 (:func:`computing_in_fp32`).
    - older GPUs (Pascal and before: fp16 without tensor cores, slow on most) and the
      CPU (no fast fp16 kernels; bf16 is fast only with AVX-512-BF16/AMX): ``fp32``,
      which also reproduces the original to 1e-5.

    >>> resolve_precision("auto", torch.device("cpu"))
    'fp32'
    """
    if precision != "auto":
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return precision
    if device.type != "cuda":
        return "fp32"
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:
        return "bf16"
    return "fp16" if major == 7 else "fp32"


def pin_fp32() -> None:
    """TF32 off for every float32 matmul and convolution of this process.

    Uses torch's documented flags only (mixing them with the newer ``fp32_precision``
    attributes is an error in torch); cuBLAS's ``NVIDIA_TF32_OVERRIDE`` is set to 0,
    which cuBLAS reads when this process creates its handles.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"


def matmul_state() -> dict[str, Any]:
    """The TF32 flags as this process has them (for the run summary and ``doctor``)."""
    state: dict[str, Any] = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    for name, read in (
        ("cuda_matmul_allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
        ("cudnn_allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
    ):
        try:
            state[name] = bool(read())
        except RuntimeError as exc:  # flags set through both of torch's APIs
            state[name] = f"unreadable: {str(exc).splitlines()[0][:80]}"
    state.update({name: os.environ.get(name) for name in TF32_ENV})
    state["tf32_off"] = (
        state["cuda_matmul_allow_tf32"] is False
        and state["cudnn_allow_tf32"] is False
        and state["float32_matmul_precision"] == "highest"
        and os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") != "1"
        and os.environ.get("NVIDIA_TF32_OVERRIDE") == "0"
    )
    return state


def _own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast_floats(v, dtype) for v in value)
    return value


@contextlib.contextmanager
def computing_in_fp32(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, ``model`` computes in fp32 though its weights stay half precision.

    Each module holding weights is converted to fp32 before its forward and back to
    its dtype after it (exact for fp16 and bf16 weights); its floating inputs are cast
    to fp32. Extra memory: one module's weights in fp32. Not thread-safe: hold the
    device while inside.
    """
    hooks = []
    original = {}

    def before(module: nn.Module, args: tuple) -> tuple:
        original[module] = next(module.parameters(recurse=False)).dtype
        with torch.inference_mode(False):
            _convert_own(module, torch.float32)
        return _cast_floats(args, torch.float32)

    def after(module: nn.Module, args: tuple, output: Any) -> Any:
        with torch.inference_mode(False):
            _convert_own(module, original.pop(module))
        return output

    for module in model.modules():
        if _own_params(module):
            hooks.append(module.register_forward_pre_hook(before))
            hooks.append(module.register_forward_hook(after))
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for module, dtype in original.items():  # a forward that raised midway
            _convert_own(module, dtype)


def _convert_own(module: nn.Module, dtype: torch.dtype) -> None:
    for param in module.parameters(recurse=False):
        param.data = param.data.to(dtype)
    for name, buf in module.named_buffers(recurse=False):
        if buf.is_floating_point():
            setattr(module, name, buf.to(dtype))


def to_mixed(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Mixed precision in place: ``nn.Linear`` weights stored and multiplied in ``dtype``
    (fp32 out), everything else fp32. Returns ``model``."""
    model.to(torch.float32)

    def cast_in(module: nn.Module, args: tuple) -> tuple:
        return _cast_floats(args, dtype)

    def cast_out(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.to(torch.float32)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
            module.register_forward_pre_hook(cast_in)
            module.register_forward_hook(cast_out)
    return model
