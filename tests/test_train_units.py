"""Pieces of training without a cluster: metrics, split, streamed batches, model file."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr
from helpers import ORIGINAL_MLP_SOURCE

from virnuc_dask.models.classifier import MLPClassifier, classifier_bytes, load_classifier
from virnuc_dask.train.data import (
    TRAIN,
    UNUSED,
    VALIDATION,
    train_batches,
    validation_rows,
    validation_split,
)
from virnuc_dask.train.metrics import binary_metrics, roc_auc, roc_curve
from virnuc_dask.train.options import TrainOptions
from virnuc_dask.train.trainer import new_classifier


def _pairwise_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_the_pairwise_probability(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))
    fpr, tpr = roc_curve(labels, scores)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(_pairwise_auc(labels, scores))


def test_metrics_from_counts():
    labels = np.array([1] * 10 + [0] * 10)
    called = np.array([1] * 7 + [0] * 3 + [1] * 2 + [0] * 8)
    m = binary_metrics(labels, called.astype(float), called)
    assert m["confusion"] == {"tn": 8, "fp": 2, "fn": 3, "tp": 7}
    assert m["accuracy"] == 0.75
    assert m["precision"] == pytest.approx(7 / 9)
    assert m["recall"] == 0.7
    assert m["f1"] == pytest.approx(2 * (7 / 9) * 0.7 / (7 / 9 + 0.7))
    inverted = binary_metrics(1 - labels, called.astype(float), called)
    assert inverted["accuracy"] == 0.25
    assert inverted["roc_auc"] == pytest.approx(1 - m["roc_auc"])
    assert binary_metrics(np.ones(3), np.ones(3))["roc_auc"] is None
    assert binary_metrics(np.zeros(3), np.zeros(3))["precision"] == 0.0


def test_validation_split_is_the_originals_shuffle():
    n, seed = 1000, 42
    indices = list(range(n))
    random.seed(seed)
    random.shuffle(indices)
    expected = set(indices[: int(n * 0.1)])
    split = validation_split(np.ones(n, dtype=bool), 0.1, seed)
    assert set(np.flatnonzero(split == VALIDATION)) == expected
    assert (split == TRAIN).sum() == n - len(expected)
    usable = np.ones(n, dtype=bool)
    usable[::7] = False
    split = validation_split(usable, 0.1, seed)
    assert (split[~usable] == UNUSED).all()
    assert (split == VALIDATION).sum() == int(usable.sum() * 0.1)
    assert not np.array_equal(split, validation_split(usable, 0.1, seed + 1))


def _store(tmp_path, rows=1000, chunk=64, width=(3, 5)):
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    rng = np.random.default_rng(0)
    dn = group.create_array(
        "dnabert", shape=(rows, width[0]), chunks=(chunk, width[0]), dtype="float32"
    )
    es = group.create_array(
        "esm", shape=(rows, width[1]), chunks=(chunk, width[1]), dtype="float32"
    )
    values = rng.random((rows, sum(width)), dtype=np.float32)
    values[:, 0] = np.arange(rows)  # the row number, to follow rows through the batches
    dn[:] = values[:, : width[0]]
    es[:] = values[:, width[0] :]
    labels = group.create_array("labels", shape=(rows,), chunks=(chunk,), dtype="int8")
    labels[:] = (np.arange(rows) % 3 == 0).astype(np.int8)
    usable = np.ones(rows, dtype=bool)
    usable[5] = False
    split = group.create_array("split", shape=(rows,), chunks=(chunk,), dtype="int8")
    split[:] = validation_split(usable, 0.1, 1)
    return group, values


def test_batches_cover_the_training_rows_once_per_epoch(tmp_path):
    group, values = _store(tmp_path)
    split = group["split"][:]
    train_rows = set(np.flatnonzero(split == TRAIN))
    seen = []
    for x, y in train_batches(group, batch_size=32, window=3, seed=1, epoch=1):
        assert len(y) <= 32
        rows = x[:, 0].astype(int)
        assert np.array_equal(y, (rows % 3 == 0).astype(int))  # labels travel with rows
        assert np.allclose(x, values[rows])
        seen.extend(rows)
    assert sorted(seen) == sorted(train_rows)
    again = [
        x[:, 0].astype(int).tolist()
        for x, _ in train_batches(group, batch_size=32, window=3, seed=1, epoch=1)
    ]
    other = [
        x[:, 0].astype(int).tolist()
        for x, _ in train_batches(group, batch_size=32, window=3, seed=1, epoch=2)
    ]
    assert [r for b in again for r in b] == seen
    assert [r for b in other for r in b] != seen
    # rows from several chunks are mixed within a batch
    assert len({r // 64 for r in again[0]}) > 1
    val = np.concatenate([x[:, 0] for x, _ in validation_rows(group)]).astype(int)
    assert val.tolist() == np.flatnonzero(split == VALIDATION).tolist()


def test_batches_hold_a_window_at_a_time(tmp_path, monkeypatch):
    import virnuc_dask.train.data as data

    group, _ = _store(tmp_path, rows=2000, chunk=50)
    calls = []
    real = data._read_chunk
    monkeypatch.setattr(data, "_read_chunk", lambda *a: calls.append(a[1]) or real(*a))
    batches = train_batches(group, batch_size=16, window=2, seed=0, epoch=1)
    next(batches)
    assert len(calls) == 2  # one window read, not the store
    sum(1 for _ in batches)
    assert sorted(calls) == list(range(40))


def test_a_single_row_last_batch_is_dropped(tmp_path):
    group, _ = _store(tmp_path, rows=100, chunk=100)
    n_train = int((group["split"][:] == TRAIN).sum())
    sizes = [
        len(y) for _, y in train_batches(group, batch_size=n_train - 1, window=1, seed=0, epoch=1)
    ]
    assert sizes == [n_train - 1]


def test_model_file_is_the_original_format_and_deterministic(tmp_path):
    model = new_classifier(20, 8, seed=3)
    assert torch.equal(model.hidden_layer.weight, new_classifier(20, 8, seed=3).hidden_layer.weight)
    assert not torch.equal(
        model.hidden_layer.weight, new_classifier(20, 8, seed=4).hidden_layer.weight
    )
    data = classifier_bytes(model)
    assert data == classifier_bytes(model)
    path = tmp_path / "m.pth"
    path.write_bytes(data)
    x = torch.randn(5, 20)
    with torch.no_grad():
        expected = model.eval()(x)
        assert torch.allclose(load_classifier(path)(x), expected)
    np.save(tmp_path / "x.npy", x.numpy())
    script = ORIGINAL_MLP_SOURCE + textwrap.dedent(f"""
        import numpy as np
        m = torch.load({str(path)!r}, weights_only=False)
        m.eval()
        x = torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}))
        with torch.no_grad():
            np.save({str(tmp_path / "y.npy")!r}, m(x).numpy())
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert np.allclose(np.load(tmp_path / "y.npy"), expected.numpy(), atol=1e-6)


def test_options_are_checked():
    assert TrainOptions().as_dict()["lr"] == 2e-4
    for bad in (
        {"epochs": 0},
        {"batch_size": 1},
        {"validation": 1.0},
        {"lr": 0},
        {"momentum": 1.0},
    ):
        with pytest.raises(ValueError):
            TrainOptions(**bad)
    assert isinstance(MLPClassifier(4, 2, 2), torch.nn.Module)


def test_training_runs_on_the_device_the_worker_claimed():
    """A worker that sees several GPUs claims one (say cuda:1): its epochs run there, not
    on torch's current device (cuda:0 unless set)."""
    from distributed import Client
    from helpers import TINY, in_process_cluster

    from virnuc_dask.config import Settings
    from virnuc_dask.dataflow.models_on_workers import wait_for_models
    from virnuc_dask.train.trainer import worker_device
    from virnuc_dask.worker.plugin import ModelPlugin, ModelSpec

    def claim_second_gpu(dask_worker) -> None:  # what a claim of GPU 1 leaves behind
        dask_worker.plugins["virnuc-dask-models"].device = torch.device("cuda", 1)

    with in_process_cluster() as cluster, Client(cluster) as client:
        client.register_plugin(ModelPlugin(ModelSpec.from_settings(Settings(**TINY))))
        wait_for_models(client, timeout=60)
        client.run(claim_second_gpu)
        assert client.submit(worker_device, pure=False).result() == torch.device("cuda", 1)
