"""Models staged for air-gapped nodes: the layout `models fetch` fills, read strictly offline.

No download can happen here, so the tiny models are put into the layout `models
fetch` produces (fair-esm hub files under torch/checkpoints, a Hugging Face hub
cache under huggingface/) and loaded through the real resolvers and a real run,
with every network route closed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REFERENCE, TINY, assert_matches_reference, predict_command

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.dnabert import load_dnabert
from virnuc_dask.models.esm2 import load_esm
from virnuc_dask.models.staging import StagedModels, dnabert_cache, esm_cache

ESM_NAME = "esm2_t2_64_tiny"
DNABERT_ID = "zhihan1996/DNABERT-S"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def no_network_env(tmp_path: Path) -> dict[str, str]:
    """Every download fails at once: proxies and hub endpoint on a closed local port."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy",)}
    closed = "http://127.0.0.1:9"
    env.update(
        {
            "https_proxy": closed,
            "HTTPS_PROXY": closed,
            "http_proxy": closed,
            "HTTP_PROXY": closed,
            "HF_HOME": str(tmp_path / "hf-home"),
            "TORCH_HOME": str(tmp_path / "torch-home"),
        }
    )
    return env


def stage_tiny(root: Path, *, esm: bool = True, dnabert: bool = True) -> Path:
    """The tiny models where `models fetch --to root` puts the real ones."""
    if esm:
        checkpoints = esm_cache(root) / "checkpoints"
        checkpoints.mkdir(parents=True)
        for suffix in (".pt", "-contact-regression.pt"):
            shutil.copy(REFERENCE / "models" / f"{ESM_NAME}{suffix}", checkpoints)
    if dnabert:
        repo = dnabert_cache(root) / ("models--" + DNABERT_ID.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(REVISION)
        shutil.copytree(TINY["dnabert_model"], repo / "snapshots" / REVISION)
    return root


def test_staged_layout_loads_offline(tmp_path):
    root = stage_tiny(tmp_path / "models")
    staged = StagedModels.check(root, esm_model=ESM_NAME, dnabert_model=DNABERT_ID)
    assert staged.esm == root / "torch" / "checkpoints" / f"{ESM_NAME}.pt"
    assert staged.dnabert.parent.name == "snapshots"
    names = {p.name for p in staged.files()}
    assert {
        f"{ESM_NAME}-contact-regression.pt",
        "config.json",
        "tokenizer.json",
        "pytorch_model.bin",
    } <= names
    model, _ = load_esm(ESM_NAME, cache_dir=esm_cache(root), offline=True)
    assert model.embed_dim == 64
    dnabert, _ = load_dnabert(DNABERT_ID, cache_dir=str(dnabert_cache(root)), offline=True)
    assert dnabert.hidden_size == 64


@pytest.mark.parametrize("missing", ["esm", "dnabert"])
def test_incomplete_stage_is_a_clear_error(tmp_path, missing):
    root = stage_tiny(tmp_path / "models", esm=missing != "esm", dnabert=missing != "dnabert")
    message = "models fetch" if missing == "esm" else "local cache \\(offline\\)"
    with pytest.raises(ModelLoadError, match=message):
        StagedModels.check(root, esm_model=ESM_NAME, dnabert_model=DNABERT_ID)


def test_run_from_staged_models_offline_matches_original(reference, tmp_path):
    stage_tiny(tmp_path / "models")
    proc = subprocess.run(
        [
            *predict_command(
                reference / "dev" / "basic" / "input.fa",
                length=500,
                esm_model=ESM_NAME,
                dnabert_model=DNABERT_ID,
            ),
            "--model-cache",
            "models",
            "--offline",
            "--out",
            "out",
        ],
        cwd=tmp_path,
        env=no_network_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert_matches_reference(tmp_path / "out", reference / "dev" / "basic" / "L500")


def fetch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "virnuc_dask", "models", "fetch", "--to", "models", *args],
        cwd=tmp_path,
        env=no_network_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fetch_without_network_fails_cleanly(tmp_path):
    proc = fetch(tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert "cannot download ESM-2 model 'esm2_t36_3B_UR50D'" in errors[0]
    assert "must run where downloads work" in errors[0]
    assert not list((tmp_path / "models").rglob("*.pt"))


def test_fetch_without_network_names_the_missing_dnabert(tmp_path):
    stage_tiny(tmp_path / "models", dnabert=False)
    proc = fetch(tmp_path, "--esm-model", ESM_NAME)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "DNABERT-S 'zhihan1996/DNABERT-S'" in proc.stderr
    assert "must run where downloads work" in proc.stderr


def test_fetch_of_a_complete_stage_prints_how_to_use_it(tmp_path):
    stage_tiny(tmp_path / "models")
    proc = fetch(tmp_path, "--esm-model", ESM_NAME)
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "models"
    assert f"--esm-model {ESM_NAME} --model-cache {root} --offline" in proc.stdout
    assert "--dnabert-model" not in proc.stdout  # the default needs no flag


def test_fetch_refuses_local_paths(tmp_path):
    proc = fetch(tmp_path, "--esm-model", TINY["esm_model"])
    assert proc.returncode == 1
    assert "not local paths" in proc.stderr
