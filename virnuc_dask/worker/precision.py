"""Embedding precision: what ``auto`` picks, fp32 pinned to IEEE, half-precision fallbacks.

- :func:`resolve_precision` picks ``fp32``/``bf16-mixed``/``fp16`` for a device;
  :func:`lowest` is the precision every one of several devices can compute (a run
  embeds in one precision, resolved once from all its workers).
- :func:`pin_fp32` turns TF32 off for an fp32 run (cuBLAS, cuDNN, torch's float32
  matmul precision, and cuBLAS's own ``NVIDIA_TF32_OVERRIDE``), whatever the site
  set: fp32 is the precision that reproduces the original to 1e-5, and TF32 keeps
  only 10 mantissa bits. :func:`matmul_state` reads the flags back for the run summary.
- :func:`computing_in_fp32` runs a half-precision model in fp32 for a few records
  (an fp16 overflow): each module with weights is converted to fp32 just before it
  runs and back right after. fp16 -> fp32 -> fp16 is exact, so the model is
  unchanged afterwards, and at most one module's fp32 copy exists at a time.
- :func:`to_mixed` (precision ``bf16-mixed``) keeps ``nn.Linear`` weights in bf16 and
  computes them in bf16, while everything else (embeddings, LayerNorm, softmax and
  attention, the residual stream) stays fp32: autocast-style mixed precision with bf16
  weight memory. It agrees with fp32 more closely than casting the whole model to
  bf16 (``bf16``), for the same weight memory (``docs/gpus.md`` has the figures).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from virnuc_dask.errors import DeviceError, ModelLoadError

MIXED = "bf16-mixed"
# The dtype of each precision's matrix products (what a matmul peak is measured in).
DTYPES = {
    "fp32": torch.float32,
    MIXED: torch.bfloat16,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
PRECISIONS = ("auto", *DTYPES)
# What ``auto`` may pick, from the least to the most a device must be able to do.
AUTO_ORDER = ("fp32", "fp16", MIXED)
TF32_ENV = ("NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The embedding precision for ``device``; ``auto`` picks by what the device computes fast.

    - CUDA compute capability >= 8.0 (Ampere, Hopper, ...): ``bf16-mixed``. Tensor cores
      run bf16 at the fp16 rate and its exponent range is fp32's, so nothing can
      overflow; the matrix products (all but ~1 % of the FLOPs) run in bf16 while
      LayerNorm, softmax and the residual stream stay fp32, which agrees with fp32
      better than casting the whole model (cosine, labels flipped: ``docs/gpus.md``).
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
    return auto_for_capability(torch.cuda.get_device_capability(device)[0])


def auto_for_capability(major: int) -> str:
    """``auto`` for a CUDA device of compute capability ``major.x`` (see
    :func:`resolve_precision`).

    >>> auto_for_capability(9), auto_for_capability(7), auto_for_capability(6)
    ('bf16-mixed', 'fp16', 'fp32')
    """
    if major >= 8:
        return MIXED
    return "fp16" if major == 7 else "fp32"


def load_dtype(precision: str) -> torch.dtype:
    """The dtype a model of ``precision`` is loaded in (``bf16-mixed``: fp32, then
    :func:`apply_precision`)."""
    return torch.float32 if precision == MIXED else DTYPES[precision]


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """``model`` (loaded in :func:`load_dtype`) made to compute in ``precision``."""
    return to_mixed(model) if precision == MIXED else model


def lowest(precisions: list[str]) -> str:
    """The precision ``auto`` gives a run whose workers' devices can each do one of
    ``precisions`` (each from :func:`resolve_precision`): the least capable wins.

    >>> lowest(["bf16-mixed", "fp16", "bf16-mixed"])
    'fp16'
    >>> lowest(["bf16-mixed", "fp32"])
    'fp32'
    """
    if not precisions:
        raise ValueError("no worker's precision to resolve from")
    return min(precisions, key=AUTO_ORDER.index)


def can_compute(own: str, run: str) -> bool:
    """Whether a device whose ``auto`` is ``own`` computes the run's ``run`` as fast as
    the devices it was resolved from (a precision ``auto`` never picks counts as any).

    >>> can_compute("bf16-mixed", "fp16"), can_compute("fp16", "bf16-mixed")
    (True, False)
    """
    if run not in AUTO_ORDER:
        return True
    return AUTO_ORDER.index(own) >= AUTO_ORDER.index(run)


def device_auto_precision(device: torch.device, *, worker: str) -> str:
    """What ``auto`` picks for ``device`` (what its hardware computes fast), asked by
    ``worker`` (its name: the one fact only a GPU node tells, replaced by tests that
    play GPUs of several generations)."""
    return resolve_precision("auto", device)


def worker_auto_precision(requested_device: str, *, worker: str) -> str | None:
    """What ``auto`` can be for this worker process, whichever of its visible GPUs it
    ends up claiming (the least capable of them); ``None`` when it cannot use the
    device it was started for (its model load fails and says why).

    Runs on a worker, before it loads its models: asks torch for the visible devices'
    compute capabilities (that initialises CUDA in this worker, which will use it)."""
    from virnuc_dask.worker import device as devices

    try:
        device = devices.decide(requested_device, devices.probe())
    except DeviceError:
        return None
    if device.type != "cuda":
        return device_auto_precision(device, worker=worker)
    count = torch.cuda.device_count()
    return lowest(
        [device_auto_precision(torch.device("cuda", i), worker=worker) for i in range(count)]
    )


def precision_for_worker(
    precision: str, device: torch.device, *, resolved: bool, worker: str
) -> str:
    """The precision a worker embeds in on ``device``: the run's ``precision``, or its own
    pick for ``auto``. With ``resolved`` (the run resolved ``auto`` from the workers
    present at its start), a device that cannot compute it as fast as they do raises
    :class:`ModelLoadError`: the worker must not join with another precision."""
    own = device_auto_precision(device, worker=worker)
    if precision == "auto":
        return own
    if resolved and not can_compute(own, precision):
        raise ModelLoadError(
            f"this worker's device ({device}) computes {own} at best, but the run embeds in "
            f"{precision}, resolved from precision auto on the workers present when it "
            "started (the least capable wins); a worker joining later with a lower "
            "capability would write rows of another precision under the same label, so it "
            f"does not join. To use it, run again with --precision {own}"
        )
    return resolve_precision(precision, device)


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


class MixedLinear(nn.Linear):
    """An ``nn.Linear`` whose weights are stored in a half dtype: the input is cast to it,
    the product computed in it, the output returned in fp32. A plain forward (no hooks),
    so compiled layers stay compiled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.weight.dtype
        return nn.functional.linear(x.to(dtype), self.weight, self.bias).to(torch.float32)


def to_mixed(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Mixed precision in place: each ``nn.Linear``'s weights stored and multiplied in
    ``dtype`` (fp32 out, :class:`MixedLinear`), everything else fp32. Returns ``model``."""
    model.to(torch.float32)
    for module in model.modules():
        # Exactly nn.Linear: a subclass may have its own forward, or (like the output
        # projection of nn.MultiheadAttention) be used through its weight alone.
        if type(module) is nn.Linear:
            module.to(dtype)
            module.__class__ = MixedLinear
    return model
