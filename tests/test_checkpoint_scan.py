"""The pickled globals of a checkpoint, scanned without loading it; ``doctor``'s check of
a given ``--esm-model`` against what the safe loader allows."""

from __future__ import annotations

import collections
import os
import pathlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TINY

from virnuc_dask.doctor.checks import check_checkpoint
from virnuc_dask.models.checkpoint_scan import disallowed_globals, pickled_globals
from virnuc_dask.models.esm2 import CHECKPOINT_CLASSES, read_checkpoint
from virnuc_dask.models.safeload import allowing


class RunsCommand:
    """A pickle that would run a command when loaded the unsafe way."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def copy_esm(directory: Path) -> Path:
    esm = Path(TINY["esm_model"])
    directory.mkdir(parents=True, exist_ok=True)
    for name in (esm.name, esm.stem + "-contact-regression.pt"):
        shutil.copy(esm.parent / name, directory / name)
    return directory / esm.name


def test_the_tiny_fair_esm_checkpoint_names_only_allowed_globals(tmp_path):
    path = copy_esm(tmp_path)
    found = pickled_globals(path)
    assert "argparse.Namespace" in found and "torch._utils._rebuild_tensor_v2" in found
    assert disallowed_globals(path, CHECKPOINT_CLASSES) == []
    # Without fair-esm's one class, the scan names it: the allowance is what it checks.
    assert disallowed_globals(path) == ["argparse.Namespace"]
    check = check_checkpoint(str(path))
    assert check.ok and "every pickled global allowed" in check.text


def test_a_checkpoint_with_an_unexpected_global_is_named_and_nothing_runs(tmp_path):
    good = copy_esm(tmp_path / "esm")
    path = good.with_name("esm2_altered.pt")
    shutil.copy(
        good.with_name(good.stem + "-contact-regression.pt"),
        path.with_name("esm2_altered-contact-regression.pt"),
    )
    marker = tmp_path / "ran"
    data = read_checkpoint(good)
    data["cfg"]["data_path"] = pathlib.PurePosixPath("/data/uniref50")
    data["hook"] = RunsCommand(marker)
    torch.save(data, path)
    check = check_checkpoint(str(path))
    assert not check.ok
    assert "pathlib.PurePosixPath" in check.text and "posix.system" in check.text
    assert "argparse.Namespace" not in check.text  # allowed for fair-esm checkpoints
    assert str(path) in check.text
    assert not marker.exists()
    # The scan says what the safe loader then does.
    with allowing(CHECKPOINT_CLASSES), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_globals_by_stack_global_and_memo_are_found(tmp_path):
    """Protocol 4 names globals with STACK_GLOBAL, its strings often taken from the memo."""
    path = tmp_path / "p4.pt"
    value = collections.OrderedDict(
        a=pathlib.PurePosixPath("x"), b=pathlib.PurePosixPath("y"), c=collections.Counter()
    )
    torch.save(value, path, pickle_protocol=4)
    assert {"pathlib.PurePosixPath", "collections.Counter", "collections.OrderedDict"} <= (
        pickled_globals(path)
    )
    legacy = tmp_path / "legacy.pt"
    torch.save(value, legacy, _use_new_zipfile_serialization=False)
    assert "pathlib.PurePosixPath" in pickled_globals(legacy)


def test_hub_name_not_on_this_node_is_said_so(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    check = check_checkpoint("esm2_t36_3B_UR50D", model_cache=str(tmp_path))
    assert check.ok and "not on this node yet" in check.text
