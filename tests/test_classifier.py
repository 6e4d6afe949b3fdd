import pickle

import numpy as np
import pytest
import torch

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.classifier import MLPClassifier, load_classifier, score
from virnuc_dask.models.demo import build_classifier


def test_loads_pickled_original_module(reference):
    model = load_classifier(reference / "models" / "mlp_tiny.pth")
    assert model.input_dim == 128 and not model.training
    assert model.output_layer.out_features == 2


def test_scores_are_softmax_in_eval_mode(reference):
    model = load_classifier(reference / "models" / "mlp_tiny.pth")
    x = np.random.default_rng(0).normal(size=(5, 128)).astype(np.float32)
    probs = score(model, x)
    assert probs.dtype == np.float32 and probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # eval-mode BatchNorm: one row alone scores the same as inside a batch
    np.testing.assert_allclose(score(model, x[:1]), probs[:1], atol=1e-6)


def test_demo_classifier_round_trips_as_main_class(tmp_path):
    path = build_classifier(tmp_path / "mlp.pth", input_dim=10, hidden=4)
    assert b"__main__" in path.read_bytes()
    model = load_classifier(path)
    assert model.input_dim == 10
    assert MLPClassifier.__module__ == "virnuc_dask.models.classifier"


def test_refuses_other_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(ModelLoadError, match="evil.pth"):
        load_classifier(path)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="bad.pth"):
        load_classifier(bad)
    with pytest.raises(ModelLoadError, match="not found"):
        load_classifier(tmp_path / "missing.pth")


def test_plain_state_dict_is_accepted(tmp_path):
    model = MLPClassifier(6, 3, 2)
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    assert load_classifier(tmp_path / "sd.pth").input_dim == 6
