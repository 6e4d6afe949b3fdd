"""Training of the VirNucPro MLP, one epoch per task, from the embedding store.

Each epoch is one task on a worker (the GPU worker's device when it has one): it
reads the checkpoint of the previous epoch, trains on the batches streamed from the
store (:mod:`.data`), measures the validation rows, updates early stopping and the
learning-rate schedule, and writes the new checkpoint atomically. A training killed
at any moment resumes from its last finished epoch.

The defaults are the original ``train.py``'s: SGD (lr 2e-4, momentum 0.9),
``StepLR(step_size=10, gamma=0.85)``, cross-entropy, batches of 32, up to 200
epochs, early stopping with patience 5 on the validation loss, Xavier-uniform
initialisation of both linear layers. Unlike the original, the best epoch's weights
are copied when they are reached and are the ones saved, whether training stops early
or runs all its epochs (see the README).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from virnuc_dask.files import atomic_writer
from virnuc_dask.models.classifier import MLPClassifier
from virnuc_dask.train.data import train_batches, validation_rows
from virnuc_dask.train.metrics import binary_metrics
from virnuc_dask.train.options import TrainOptions
from virnuc_dask.worker.device import pick_device

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def new_classifier(input_dim: int, hidden: int, seed: int) -> MLPClassifier:
    """A freshly initialised MLP (Xavier-uniform weights, as the original's ``init_weights``)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPClassifier(input_dim, hidden, 2)
    nn.init.xavier_uniform_(model.hidden_layer.weight, generator=generator)
    nn.init.xavier_uniform_(model.output_layer.weight, generator=generator)
    return model


def _optimizer(
    model: nn.Module, options: TrainOptions
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    optimizer = torch.optim.SGD(model.parameters(), lr=options.lr, momentum=options.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=options.step_size, gamma=options.gamma
    )
    return optimizer, scheduler


def _cpu_state(module_or_state: Any) -> dict[str, torch.Tensor]:
    state = (
        module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    )
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (tensors and plain values only), or None if there is none."""
    if not Path(path).is_file():
        return None
    return torch.load(os.fspath(path), map_location="cpu", weights_only=True)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_writer(path, "wb") as fh:
        torch.save(state, fh)


def validate(
    model: MLPClassifier, group: zarr.Group, device: torch.device, batch: int = 4096
) -> dict[str, Any]:
    """Mean cross-entropy over the validation rows and the metrics of its calls."""
    model.eval()
    loss_sum, labels, scores, calls = 0.0, [], [], []
    with torch.inference_mode():
        for x, y in validation_rows(group):
            for lo in range(0, len(y), batch):
                xb = torch.from_numpy(x[lo : lo + batch]).to(device)
                yb = torch.from_numpy(y[lo : lo + batch]).to(device)
                logits = model(xb)
                loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
                probs = torch.softmax(logits.float(), dim=1)
                scores.append(probs[:, 1].cpu().numpy())
                calls.append((logits.argmax(dim=1) == 1).cpu().numpy())
                labels.append(y[lo : lo + batch])
    if not labels:
        raise ValueError("no validation rows")
    y_all = np.concatenate(labels)
    metrics = binary_metrics(y_all, np.concatenate(scores), np.concatenate(calls))
    return {"val_loss": loss_sum / len(y_all), **metrics}


def worker_device() -> torch.device:
    """The device the models of the worker running this task claimed (its own GPU when
    the worker sees several), or this process's device outside a worker."""
    from distributed import get_worker

    from virnuc_dask.worker.plugin import worker_models

    try:
        get_worker()
    except ValueError:
        return pick_device()
    return worker_models().device


def run_epoch(job: dict[str, Any]) -> dict[str, Any]:
    """Train one epoch from the checkpoint in ``job["dir"]`` (the worker's task).

    ``job``: ``dir`` (training directory), ``store`` (Zarr path), ``options``
    (:class:`TrainOptions` as a dict), ``input_dim``, ``threads`` (torch threads on a
    CPU, or None). Returns the epoch's log record and whether training is over.
    """
    options = TrainOptions(**job["options"])
    directory = Path(job["dir"])
    device = worker_device()
    if device.type == "cpu" and job.get("threads"):
        torch.set_num_threads(job["threads"])
    state = load_checkpoint(directory / CHECKPOINT)
    model = new_classifier(job["input_dim"], options.hidden, options.seed)
    model.to(device)
    optimizer, scheduler = _optimizer(model, options)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    else:
        state = {
            "epoch": 0,
            "best_epoch": None,
            "best_val_loss": None,
            "best_model": None,
            "stale": 0,
            "history": [],
            "finished": False,
        }
    epoch = state["epoch"] + 1
    group = zarr.open_group(job["store"], mode="r")
    t = time.perf_counter()
    # Dropout and nothing else draws from torch's generator: seeded per epoch.
    torch.manual_seed(options.seed * 100003 + epoch)
    model.train()
    loss_sum, batches, rows = 0.0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
    for x, y in train_batches(
        group,
        batch_size=options.batch_size,
        window=options.shuffle_window,
        seed=options.seed,
        epoch=epoch,
    ):
        xb, yb = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        batches += 1
        rows += len(y)
    if not batches:
        raise ValueError("no training rows")
    train_seconds = time.perf_counter() - t
    measured = validate(model, group, device)
    record = {
        "epoch": epoch,
        "train_loss": loss_sum / batches,
        "lr": lr,
        "train_rows": rows,
        "seconds": time.perf_counter() - t,
        "train_seconds": train_seconds,
        **measured,
    }

    # Early stopping as the original counts it, but with a copy of the best weights.
    best = state["best_val_loss"]
    if best is None or measured["val_loss"] < best - options.min_delta:
        state.update(
            best_val_loss=measured["val_loss"],
            best_epoch=epoch,
            best_model=_cpu_state(model),
            stale=0,
        )
    else:
        state["stale"] += 1
    stopped_early = state["stale"] >= options.patience
    finished = stopped_early or epoch >= options.epochs
    if not finished:
        scheduler.step()
    state.update(
        epoch=epoch,
        model=_cpu_state(model),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        finished=finished,
        stopped_early=stopped_early,
    )
    state["history"] = [*state["history"], record]
    _save_checkpoint(directory / CHECKPOINT, _to_cpu(state))
    return {
        "record": record,
        "finished": finished,
        "stopped_early": stopped_early,
        "best_epoch": state["best_epoch"],
    }


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def best_model(state: dict[str, Any], input_dim: int, hidden: int) -> MLPClassifier:
    """The classifier with the best epoch's weights, on the CPU, in eval mode."""
    model = MLPClassifier(input_dim, hidden, 2)
    model.load_state_dict(copy.deepcopy(state["best_model"]))
    return model.eval()
