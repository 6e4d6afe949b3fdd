"""``train``: labelled inputs -> embeddings (the prediction dataflow) -> a classifier.

::

    --viral / --other files --embed_inputs (training-mode ORFs)--> embeddings.zarr
        + labels (by input file) + split (validation rows drawn from --seed)
        --run_epoch (one task per epoch, checkpointed)--> training/checkpoint.pt
        --best epoch's weights--> model.pth, training_log.tsv, training_summary.json

Usage::

    from distributed import Client
    from virnuc_dask.train.inputs import TrainInputs
    from virnuc_dask.train.run import train
    from virnuc_dask.train.options import TrainOptions

    with Client() as client:
        result = train(settings, TrainInputs(viral=("v.fa",), other=("o.fa",)),
                       TrainOptions(epochs=20), client)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, wait

from virnuc_dask import __version__
from virnuc_dask.config import Settings
from virnuc_dask.core.training_orfs import TrainingSelection, load_reference
from virnuc_dask.dataflow.dashboard import unique_key
from virnuc_dask.dataflow.embedding_graph import MODEL_RESOURCES
from virnuc_dask.dataflow.identity import file_digest
from virnuc_dask.dataflow.pipeline import embedding_scratch
from virnuc_dask.dataflow.session import ProgressFactory, run_session
from virnuc_dask.dataflow.store import checked_compressors
from virnuc_dask.dataflow.streaming import Embedded, embed_inputs
from virnuc_dask.errors import OutputDirError, TrainingDataError, VirnucError
from virnuc_dask.events import Progress, reporter
from virnuc_dask.files import atomic_write_text
from virnuc_dask.models.classifier import classifier_bytes
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS
from virnuc_dask.partition_result import failed_rows
from virnuc_dask.rundir import MODEL, TRAINING_STATE
from virnuc_dask.rundir import TRAINING_LOG as LOG
from virnuc_dask.rundir import TRAINING_SUMMARY as SUMMARY
from virnuc_dask.train.data import UNUSED, VALIDATION, validation_split
from virnuc_dask.train.inputs import TrainInputs, check_classes, preflight_training
from virnuc_dask.train.options import TrainOptions
from virnuc_dask.train.trainer import CHECKPOINT, best_model, load_checkpoint

logger = logging.getLogger(__name__)

LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "lr",
    "seconds",
)
# How long the cluster may have no worker at all while an epoch runs.
NO_WORKER_S = 300.0
POLL_S = 10.0


@dataclasses.dataclass
class TrainResult:
    out: Path
    model: Path
    summary: dict[str, Any]


def _row_labels(inputs: TrainInputs, embedded: Embedded) -> np.ndarray:
    viral = set(inputs.viral)
    per_block = np.array([1 if b.path in viral else 0 for b in embedded.blocks], dtype=np.int8)
    return np.repeat(per_block, embedded.counts)


def _failed_rows(embedded: Embedded) -> np.ndarray:
    entries = [*embedded.store.entries().values(), *embedded.partition_stats]
    rows = set(failed_rows(entries))
    # Partitions of which nothing could be embedded are not recorded as done; their rows
    # are zeros. (They are listed in partition_stats, with every row failed.)
    return np.array(sorted(rows), dtype=np.int64)


def _write_rows(embedded: Embedded, labels: np.ndarray, split: np.ndarray) -> None:
    group = embedded.store.group("r+")
    chunk = int(group[MODEL_KEYS[0]].chunks[0])
    for name, values in (("labels", labels), ("split", split)):
        array = group.create_array(
            name,
            shape=values.shape,
            chunks=(max(1, chunk),),
            dtype="int8",
            fill_value=UNUSED,
            overwrite=True,
            compressors=checked_compressors(),
        )
        array[:] = values
    embedded.store.record_metadata()


def _log_text(history: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "NA"
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    lines = ["\t".join(LOG_COLUMNS)]
    lines += ["\t".join(cell(r.get(c)) for c in LOG_COLUMNS) for r in history]
    return "\n".join(lines) + "\n"


def _training_fingerprint(
    settings, inputs: TrainInputs, options: TrainOptions, store_id: str | None
) -> dict[str, Any]:
    return {
        "options": options.as_dict(),
        "store_id": store_id,
        "viral": list(inputs.viral),
        "other": list(inputs.other),
    }


def _wait_epoch(client: Client, future) -> dict[str, Any]:
    """The epoch's result; fails when the cluster has had no worker for ``NO_WORKER_S``."""
    alone_since = None
    while True:
        try:
            wait(future, timeout=POLL_S)
            return future.result()
        except TimeoutError:
            if client.scheduler_info()["workers"]:
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > NO_WORKER_S:
                client.cancel(future)
                raise VirnucError(
                    f"training stopped: the cluster has had no worker for {NO_WORKER_S:.0f} s; "
                    "the last finished epoch is kept, re-run the command to resume"
                ) from None


def _epoch_task(job: dict[str, Any]) -> dict[str, Any]:
    from virnuc_dask.train.trainer import run_epoch

    return run_epoch(job)


def train(
    settings: Settings,
    inputs: TrainInputs,
    options: TrainOptions,
    client: Client,
    *,
    progress: Progress | None = None,
) -> TrainResult:
    """Embed the labelled inputs, train, and write the classifier and its log into ``out``."""
    tick = reporter(progress)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    preflight_training(settings, inputs)
    out = Path(settings.out)
    # Training reads every embedding back: the store keeps them, in float32.
    settings = settings.replace(
        inputs=inputs.files, classifier=None, keep_embeddings=True, embeddings_dtype="float32"
    )
    if inputs.protein_reference:
        load_reference(inputs.protein_reference)  # a bad reference fails here, not on workers
    extra = {
        "selection": "training",
        "protein_reference": [
            {"path": p, "sha256": file_digest(p)} for p in inputs.protein_reference
        ],
        "classes": {"viral": list(inputs.viral), "other": list(inputs.other)},
    }
    with embedding_scratch(settings) as root:
        embedded = embed_inputs(
            settings,
            client,
            root=root,
            tick=tick,
            timings=timings,
            select=TrainingSelection(inputs.protein_reference),
            fingerprint_extra=extra,
            check_counts=lambda blocks, counts: check_classes(inputs, blocks, counts),
        )

    labels = _row_labels(inputs, embedded)
    usable = np.ones(len(labels), dtype=bool)
    usable[_failed_rows(embedded)] = False
    for name, value in (("viral", 1), ("other", 0)):
        if not (usable & (labels == value)).any():
            files = inputs.viral if value else inputs.other
            raise TrainingDataError(
                f"no usable {name} record: no ORF of {', '.join(files)} "
                "could be embedded (see the log)"
            )
    split = validation_split(usable, options.validation, options.seed)
    if not (split == VALIDATION).any() or not (split == 0).any():
        raise TrainingDataError(
            f"{int(usable.sum())} usable ORFs are too few to hold out a validation fraction "
            f"of {options.validation} and train on the rest"
        )
    _write_rows(embedded, labels, split)

    directory = out / TRAINING_STATE
    directory.mkdir(exist_ok=True)
    fp = _training_fingerprint(settings, inputs, options, embedded.store.store_id)
    fp_path = directory / "fingerprint.json"
    state = load_checkpoint(directory / CHECKPOINT)
    if state is not None and not settings.overwrite and fp_path.is_file():
        old = json.loads(fp_path.read_text())
        if old != fp:
            differs = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise OutputDirError(
                f"{directory} holds a training with different {', '.join(differs)}; use "
                "another --out, or --overwrite to start afresh"
            )
    elif state is not None:
        (directory / CHECKPOINT).unlink()
        state = None
    atomic_write_text(fp_path, json.dumps(fp, indent=2) + "\n")

    input_dim = sum(embedded.facts[key] for key in MODEL_KEYS)
    job = {
        "dir": str(directory),
        "store": str(embedded.store.path),
        "options": options.as_dict(),
        "input_dim": input_dim,
        "threads": settings.threads,
    }
    # On a worker with its models loaded (its device), one task at a time per worker.
    resources = MODEL_RESOURCES
    t = time.perf_counter()
    history = list(state["history"]) if state else []
    finished = bool(state and state["finished"])
    if history:
        logger.info("resuming training after epoch %d", len(history))
    tick("train", len(history), options.epochs)
    while not finished:
        future = client.submit(
            _epoch_task, job, key=unique_key("train-epoch"), resources=resources, pure=False
        )
        outcome = _wait_epoch(client, future)
        record = outcome["record"]
        history.append(record)
        finished = outcome["finished"]
        atomic_write_text(out / LOG, _log_text(history))
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, accuracy %.4f, F1 %.4f, "
            "ROC AUC %s (%.1f s)%s",
            record["epoch"],
            options.epochs,
            record["train_loss"],
            record["val_loss"],
            record["accuracy"],
            record["f1"],
            "NA" if record["roc_auc"] is None else f"{record['roc_auc']:.4f}",
            record["seconds"],
            "; early stop" if outcome["stopped_early"] else "",
        )
        tick(
            "train",
            record["epoch"],
            options.epochs,
            loss=record["train_loss"],
            val_loss=record["val_loss"],
            accuracy=record["accuracy"],
        )
    timings["train"] = time.perf_counter() - t

    state = load_checkpoint(directory / CHECKPOINT)
    model = best_model(state, input_dim, options.hidden)
    model_path = out / MODEL
    tmp = out / f".{MODEL}.tmp"
    tmp.write_bytes(classifier_bytes(model))
    tmp.replace(model_path)
    atomic_write_text(out / LOG, _log_text(state["history"]))
    timings["total"] = time.perf_counter() - t0
    summary = _summary(
        settings, inputs, options, embedded, labels, split, state, timings, model_path
    )
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return TrainResult(out, model_path, summary)


def _class_counts(labels: np.ndarray, split: np.ndarray, value: int) -> dict[str, int]:
    mine = labels == value
    return {
        "orfs": int(mine.sum()),
        "train": int((mine & (split == 0)).sum()),
        "validation": int((mine & (split == VALIDATION)).sum()),
        "unused": int((mine & (split == UNUSED)).sum()),
    }


def _summary(
    settings: Settings,
    inputs: TrainInputs,
    options: TrainOptions,
    embedded: Embedded,
    labels: np.ndarray,
    split: np.ndarray,
    state: dict[str, Any],
    timings: dict[str, float],
    model_path: Path,
) -> dict[str, Any]:
    history = state["history"]
    best = next(r for r in history if r["epoch"] == state["best_epoch"])
    return {
        "version": __version__,
        "model": str(model_path),
        "length": settings.length,
        "inputs": {"viral": list(inputs.viral), "other": list(inputs.other)},
        "selection": inputs.selection_summary(),
        "models": {
            m.key: {"source": m.source(settings), "dim": embedded.facts[m.key]}
            for m in EMBEDDING_MODELS
        },
        "precision": embedded.facts["precision"],
        "device": embedded.facts["device"],
        "data": {
            "reads": embedded.reads,
            "orfs": int(len(labels)),
            "viral": _class_counts(labels, split, 1),
            "other": _class_counts(labels, split, 0),
        },
        "split": {
            "train": int((split == 0).sum()),
            "validation": int((split == 1).sum()),
            "unused": int((split == UNUSED).sum()),
            "fraction": options.validation,
            "seed": options.seed,
        },
        "options": options.as_dict(),
        "epochs_run": len(history),
        "stopped_early": bool(state.get("stopped_early")),
        "best_epoch": state["best_epoch"],
        "best": {
            k: best[k]
            for k in ("val_loss", "accuracy", "precision", "recall", "f1", "roc_auc", "confusion")
        },
        "last": {k: history[-1][k] for k in ("train_loss", "val_loss", "accuracy", "f1")},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_training(
    settings: Settings,
    inputs: TrainInputs,
    options: TrainOptions,
    *,
    client: Client | None = None,
    progress: ProgressFactory | None = None,
) -> TrainResult:
    """:func:`train` in the run's session (:func:`~virnuc_dask.dataflow.session.run_session`:
    the cluster the settings name unless a client is given, the dashboard link, Dask's
    performance report when asked)."""
    preflight_training(settings, inputs)  # bad inputs fail here, before any cluster starts
    with run_session(settings, client=client, progress=progress) as session:
        return train(settings, inputs, options, session.client, progress=session.progress)
