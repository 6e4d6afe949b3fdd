"""Compiled layer bodies: when to compile, where the compiled kernels are kept, and the
fallback to the eager body.

:class:`.esm_fast.SdpaEsm2` and :class:`.dnabert_encoder.DnabertS` compute each layer
with one function of the layer module and tensors (torch.compile inlines the module:
its parameters are inputs of the graph, so every layer of a model shares one graph).
:class:`LayerFunction` wraps such a function with
``torch.compile`` (``fullgraph=True``: a graph break is an error, not a silent slow
path; the batch and length dimensions are marked dynamic by the callers, so one
compilation serves every batch shape) or returns it as it is.

- ``compile`` setting: ``auto`` (the default) compiles on CPU and CUDA, where it was
  measured faster (``docs/performance.md``); ``on`` / ``off`` force it. The environment
  variable ``VIRNUC_DASK_COMPILE=on|off`` overrides the setting in every process of a
  run (workers included): the off switch for debugging.
- Compiled kernels are cached per user in ``$XDG_CACHE_HOME/virnuc-dask/torch-compile``
  (``~/.cache/...``; ``TORCHINDUCTOR_CACHE_DIR`` where the user set it to anything but
  torch's default), so a worker of a later run loads them instead of compiling again
  (and a node-local ``/tmp``, torch's default, is not where they go).
- If compilation fails (no C++ compiler on a CPU node, an unsupported device), the
  eager body runs, after one warning; results are the same to float rounding.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._dynamo.exc
import torch._inductor.exc
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

logger = logging.getLogger(__name__)

COMPILE_CHOICES = ("auto", "on", "off")
ENV = "VIRNUC_DASK_COMPILE"
_lock = threading.Lock()
# What a failed compilation raises (an out-of-memory error of the compiled code is not one).
COMPILER_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError)


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``TORCHINDUCTOR_CACHE_DIR`` if the user set it,
    else the user's cache directory.

    Importing torch's compiler sets that variable to torch's own default, a node-local
    ``/tmp/torchinductor_<user>``: that value is not the user's choice and is replaced.
    """
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given and os.path.abspath(given) != os.path.abspath(default_cache_dir()):
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "virnuc-dask" / "torch-compile"


def wanted(setting: str, device: torch.device | str) -> bool:
    """Whether layer bodies are compiled for ``setting`` on ``device`` (the environment
    variable first).

    >>> wanted("off", "cpu")
    False
    """
    choice = os.environ.get(ENV, "").strip().lower() or setting
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice == "on"
    return torch.device(device).type in ("cpu", "cuda")


class LayerFunction:
    """A layer body ``body(layer_module, *tensors)``, compiled on first use when asked;
    eager after a failed compilation, and for a layer with hooks."""

    def __init__(self, body: Callable[..., torch.Tensor], compiled: bool) -> None:
        self.body = body
        self.compiled = compiled
        self._fn: Callable[..., torch.Tensor] | None = None

    def __call__(self, layer: torch.nn.Module, *args: Any) -> torch.Tensor:
        # Hooks (the fp32 recompute of an overflowed half-precision batch, mixed
        # precision) change weights or dtypes as modules run: those calls run eagerly.
        if not self.compiled or hooked(layer):
            return self.body(layer, *args)
        if self._fn is None:
            with _lock:
                if self._fn is None:
                    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir())
                    self._fn = torch.compile(self.body, fullgraph=True, dynamic=None)
        try:
            return self._fn(layer, *args)
        except COMPILER_ERRORS as exc:
            logger.warning(
                "compiling %s failed (%s: %s); running it uncompiled (same results, slower)",
                self.body.__name__,
                type(exc).__name__,
                str(exc).strip().splitlines()[0] if str(exc).strip() else "",
            )
            self.compiled = False
            return self.body(layer, *args)


def hooked(module: torch.nn.Module) -> bool:
    """Whether ``module`` or a submodule has forward hooks."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def mark_dynamic(*tensors: torch.Tensor | None, dims: tuple[int, ...] = (0, 1)) -> None:
    """Mark the batch and length dimensions dynamic, so that the first compilation is the
    general one (no recompilation when the next batch has another shape)."""
    for t in tensors:
        if t is not None:
            for d in dims:
                torch._dynamo.maybe_mark_dynamic(t, d)


def compile_models(models: list[torch.nn.Module], spec: Any, device: torch.device) -> bool:
    """Compile the layers of each model that can (``compile_layers``) if ``spec.compile``
    asks for it on ``device``; whether they are compiled."""
    on = wanted(spec.compile, device)
    for model in models:
        getattr(model, "compile_layers", lambda _: None)(on)
    return on
