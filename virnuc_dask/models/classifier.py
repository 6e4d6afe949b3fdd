"""The VirNucPro classifier: load the published pickled module safely and score rows.

The published ``300_model.pth`` / ``500_model.pth`` are whole ``torch.save``-d
modules of class ``__main__.MLPClassifier``. They are read with torch's
weights-only unpickler, allowing exactly that one name (mapped to the class
below) and the three layer classes it contains; nothing else in the file can
run. The weights are then copied into a fresh :class:`MLPClassifier`.
"""

from __future__ import annotations

import collections
import copy
import io
import os
import pickle
import types
import zipfile

import numpy as np
import torch
from torch import nn

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.safeload import allowing


class MLPClassifier(nn.Module):
    """hidden Linear -> BatchNorm1d -> ReLU -> Dropout -> output Linear (VirNucPro's MLP)."""

    def __init__(self, input_dim: int, hidden_dim: int, num_class: int) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    @property
    def input_dim(self) -> int:
        return self.hidden_layer.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))


class _PickledMLP(nn.Module):
    """Stand-in for ``__main__.MLPClassifier`` while unpickling; only its weights are used."""


_ALLOWED = [
    (_PickledMLP, "__main__.MLPClassifier"),
    nn.Linear,
    nn.BatchNorm1d,
    nn.Dropout,
    set,
    collections.OrderedDict,
]


def load_classifier(path: str | os.PathLike[str]) -> MLPClassifier:
    """Load a VirNucPro classifier file (pickled module or plain state dict), in eval mode."""
    try:
        with allowing(_ALLOWED):
            obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: classifier file not found") from None
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: not a loadable VirNucPro classifier: {first}") from None
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a pickled MLPClassifier, got {type(obj).__name__}")
    try:
        hidden, input_dim = state["hidden_layer.weight"].shape
        num_class = state["output_layer.weight"].shape[0]
    except (KeyError, AttributeError, ValueError):
        raise ModelLoadError(
            f"{path}: not a VirNucPro MLPClassifier (needs hidden_layer, bn1, output_layer)"
        ) from None
    model = MLPClassifier(input_dim, hidden, num_class)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: classifier weights do not fit: {exc}") from None
    if isinstance(obj, nn.Module):
        model.bn1.eps = obj.bn1.eps
    return model.eval()


@torch.inference_mode()
def score(model: MLPClassifier, features: np.ndarray) -> np.ndarray:
    """Softmax class probabilities (float32, ``[n, classes]``) for rows of features."""
    if features.shape[0] == 0:
        return np.zeros((0, model.output_layer.out_features), dtype=np.float32)
    logits = model(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
    return torch.softmax(logits, dim=1).numpy()


class _MainPickler(pickle._Pickler):
    """Writes :class:`MLPClassifier` as ``__main__.MLPClassifier``, the name under which the
    original's ``train.py`` pickled its model and its ``prediction.py`` looks it up."""

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is MLPClassifier:
            self.write(pickle.GLOBAL + b"__main__\nMLPClassifier\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


_MAIN_PICKLE = types.SimpleNamespace(
    __name__="pickle", Pickler=_MainPickler, Unpickler=pickle.Unpickler
)


def classifier_bytes(model: MLPClassifier) -> bytes:
    """``model`` (on the CPU, in eval mode) as a ``torch.save``-d whole module of class
    ``__main__.MLPClassifier``: the format of the published ``300_model.pth``.

    The original ``prediction.py`` loads it with a plain ``torch.load`` (its own
    ``MLPClassifier`` in ``__main__``), :func:`load_classifier` with its restricted
    unpickler. The bytes depend only on the weights (the same weights, the same file).
    """
    model = copy.deepcopy(model).cpu().eval()
    buffer = io.BytesIO()
    torch.save(model, buffer, pickle_module=_MAIN_PICKLE, pickle_protocol=2)
    return buffer.getvalue()
