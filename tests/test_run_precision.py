"""One precision per run: ``auto`` resolved once on the client from every worker (the
least capable wins), and a worker joining later that cannot compute it refused.

What each worker's device can compute is the one thing only a GPU shows; here the
function that reads it (:func:`virnuc_dask.worker.precision.device_auto_precision`) is
replaced by one answering per worker name, as GPUs of two generations on one node
would. Everything else is real: in-process workers loading the tiny models.
"""

from __future__ import annotations

import torch
from distributed import Client
from helpers import TINY, in_process_cluster, wait_until

from virnuc_dask.config import Settings
from virnuc_dask.dataflow.models_on_workers import load_failures, load_models, model_status
from virnuc_dask.worker import precision
from virnuc_dask.worker.precision import MIXED

# Worker name -> what its "GPU" computes best.
CAPABLE = {"0": MIXED, "1": "fp16", "2": "fp32"}


def per_worker(device: torch.device, *, worker: str) -> str:
    return CAPABLE[worker]


def test_the_least_capable_worker_decides_the_precision_of_all(monkeypatch):
    monkeypatch.setattr(precision, "device_auto_precision", per_worker)
    with in_process_cluster(2) as c, Client(c) as client:
        client.wait_for_workers(2, timeout=30)
        facts = load_models(Settings(**TINY, threads=1), client)

        def ready():
            return [s for s in model_status(client).values() if s["state"] == "ready"]

        wait_until(lambda: len(ready()) == 2, timeout=60)
        precisions = {s["worker_name"]: s["precision"] for s in ready()}
    assert facts["precision"] == "fp16"
    assert precisions == {"0": "fp16", "1": "fp16"}


def test_all_workers_able_gives_the_mixed_mode_and_its_weights(monkeypatch):
    monkeypatch.setattr(precision, "device_auto_precision", lambda device, worker: MIXED)
    with in_process_cluster(1) as c, Client(c) as client:
        facts = load_models(Settings(**TINY, threads=1), client)

        def weight_dtypes(dask_worker) -> dict[str, list[str]]:
            plugin = dask_worker.plugins["virnuc-dask-models"]
            return {
                key: sorted({str(p.dtype) for p in a.model.parameters()})
                for key, a in plugin.adapters.items()
            }

        dtypes = client.run(weight_dtypes)
    assert facts["precision"] == MIXED
    # Matrix weights bf16, LayerNorm and embeddings fp32: not a whole-model cast.
    for per_model in dtypes.values():
        for found in per_model.values():
            assert found == ["torch.bfloat16", "torch.float32"]


def test_an_explicit_precision_is_not_resolved(monkeypatch):
    monkeypatch.setattr(precision, "device_auto_precision", per_worker)
    with in_process_cluster(2) as c, Client(c) as client:
        client.wait_for_workers(2, timeout=30)
        facts = load_models(Settings(**TINY, threads=1, precision="fp32"), client)
    assert facts["precision"] == "fp32"


def test_a_less_capable_worker_joining_later_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(precision, "device_auto_precision", per_worker)
    with in_process_cluster(1) as c, Client(c) as client:
        facts = load_models(Settings(**TINY, threads=1), client)
        assert facts["precision"] == MIXED
        c.scale(2)  # worker 1: an fp16-only GPU
        assert wait_until(lambda: load_failures(client, run=facts["run"]), timeout=60)
        (failed,) = load_failures(client, run=facts["run"])
        assert wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=60)
        (left,) = model_status(client).values()
    assert "could not load the models" in failed["error"]
    assert "computes fp16 at best, but the run embeds in bf16-mixed" in failed["error"]
    assert "--precision fp16" in failed["error"]
    assert left["precision"] == MIXED and left["state"] == "ready"
