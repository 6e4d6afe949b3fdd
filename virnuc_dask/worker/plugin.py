"""The models on a worker: loaded once per worker process by a named ``WorkerPlugin``.

Register it with ``client.register_plugin(ModelPlugin(spec))``; every current
and future worker (a restarted one included) sets it up, and tasks reach it
through :func:`worker_models`. This is the only place a model is loaded on a
worker.

>>> plugin = ModelPlugin(ModelSpec(esm_model="esm2.pt", dnabert_model="dnabert/",
...                                classifier="300_model.pth"))
>>> plugin.name
'virnuc-dask-models'
"""

from __future__ import annotations

import dataclasses
import logging
import os
from urllib.parse import urlsplit

import torch
from distributed import WorkerPlugin, get_worker

logger = logging.getLogger(__name__)

PLUGIN_NAME = "virnuc-dask-models"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where the models come from and how to run them."""

    esm_model: str
    dnabert_model: str
    classifier: str
    precision: str = "auto"
    model_cache: str | None = None
    offline: bool = False
    threads: int | None = None
    threads_by_host: tuple[tuple[str, int], ...] = ()


def pick_device() -> torch.device:
    """The worker's GPU (dask-cuda gives each worker one visible device) or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The embedding precision for ``device``; ``auto`` picks by what the device computes fast.

    - CUDA compute capability >= 8.0 (Ampere, Hopper, ...): ``bf16``. Tensor cores run
      bf16 at the fp16 rate and its exponent range is fp32's, so nothing can overflow.
    - CUDA 7.x (Volta V100, Turing T4): ``fp16``. These GPUs have fp16 tensor cores
      (V100: 125 TFLOP/s fp16 against 15.7 fp32) but no bf16. fp16 carries three more
      mantissa bits than bf16, and on the reference cases it agrees with fp32 at least
      as closely as bf16 (``tests/test_precision.py``, ``virnuc-dask bench``: cosine
      similarity, ORF labels flipped). Its risk is overflow above 65504; ESM-2 3B is
      run in fp16 by fair-esm's own ESMFold, DNABERT-S normalises after every
      sub-layer, and an embedding that still comes out non-finite fails loudly
      (:class:`.embed.NonFiniteEmbedding`) naming ``--precision fp32``.
    - older GPUs (Pascal and before: fp16 without tensor cores, slow on most) and the
      CPU (no fast fp16 kernels; bf16 is fast only with AVX-512-BF16/AMX): ``fp32``,
      which also reproduces the original to 1e-5.

    >>> resolve_precision("auto", torch.device("cpu"))
    'fp32'
    """
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:
        return "bf16"
    return "fp16" if major == 7 else "fp32"


class ModelPlugin(WorkerPlugin):
    """Loads DNABERT-S, ESM-2 and the classifier once per worker."""

    name = PLUGIN_NAME

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.device: torch.device | None = None
        self.threads: int | None = None
        self.precision: str | None = None
        self.esm = self.alphabet = self.dnabert = self.tokenizer = self.classifier = None

    def setup(self, worker: object) -> None:
        from virnuc_dask.models.classifier import load_classifier
        from virnuc_dask.models.dnabert import load_dnabert
        from virnuc_dask.models.esm2 import load_esm
        from virnuc_dask.models.esm_fast import SdpaEsm2

        spec = self.spec
        self.device = pick_device()
        self.threads = None
        if self.device.type == "cpu":
            host = urlsplit(getattr(worker, "address", "")).hostname
            self.threads = spec.threads or dict(spec.threads_by_host).get(host)
        self.precision = resolve_precision(spec.precision, self.device)
        dtype = DTYPES[self.precision]
        cache = spec.model_cache
        self.dnabert, self.tokenizer = load_dnabert(
            spec.dnabert_model, device=self.device, dtype=dtype,
            cache_dir=None if cache is None else os.path.join(cache, "huggingface"),
            offline=spec.offline)
        esm, self.alphabet = load_esm(
            spec.esm_model, device=self.device, dtype=dtype,
            cache_dir=None if cache is None else os.path.join(cache, "torch"),
            offline=spec.offline)
        # The same layers through fused attention kernels; fp32 agreement with fair-esm's
        # forward is tested in tests/test_esm_fast.py.
        self.esm = SdpaEsm2(esm)
        self.classifier = load_classifier(spec.classifier)
        logger.info("models ready on %s (%s, %d torch threads)", self.device, self.precision,
                    torch.get_num_threads())

    def teardown(self, worker: object) -> None:
        self.esm = self.alphabet = self.dnabert = self.tokenizer = self.classifier = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def activate(self) -> ModelPlugin:
        """Call at the start of a task: torch's CPU thread count is per calling thread."""
        if self.threads:
            torch.set_num_threads(self.threads)
        return self

    @property
    def dims(self) -> dict[str, int]:
        return {"dnabert": self.dnabert.hidden_size, "esm": self.esm.embed_dim,
                "classifier_input": self.classifier.input_dim}


def worker_models() -> ModelPlugin:
    """The model plugin of the worker running the current task."""
    worker = get_worker()
    try:
        plugin = worker.plugins[PLUGIN_NAME]
    except KeyError:
        raise RuntimeError(
            f"worker {worker.address} has no {PLUGIN_NAME!r} plugin; register ModelPlugin first"
        ) from None
    return plugin.activate()
