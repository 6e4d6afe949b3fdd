"""Compiled layer bodies agree with the eager ones (fp32, 1e-5) on tiny models, serve
batches of other shapes without recompiling, keep their kernels in the user's cache,
and fall back to the eager body when compilation fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import REFERENCE

from virnuc_dask.models import compiled
from virnuc_dask.models.compiled import LayerFunction, cache_dir, wanted
from virnuc_dask.models.dnabert import load_dnabert
from virnuc_dask.models.esm2 import load_esm
from virnuc_dask.models.esm_fast import SdpaEsm2, esm_layer

TOL = 1e-5
MODELS = REFERENCE / "models"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def kernels_in_tmp(tmp_path_factory, monkeypatch):
    """Compiled kernels of the tests in a scratch cache, not the user's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "inductor"))


def esm_batch(alphabet, lengths: list[int], seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    proteins = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=n)) for n in lengths]
    _, _, tokens = alphabet.get_batch_converter()([(str(i), p) for i, p in enumerate(proteins)])
    return tokens


@pytest.mark.slow
def test_esm_compiled_layers_agree_with_eager_and_do_not_recompile():
    model, alphabet = load_esm(str(MODELS / "esm2_t2_64_tiny.pt"))
    eager = SdpaEsm2(model)
    fast = SdpaEsm2(model, compile_layers=True)
    torch._dynamo.reset()
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    layers = list(range(model.num_layers + 1))
    # padded batches of two shapes, then one without padding (no key mask)
    for lengths, seed in (([37, 5, 20], 1), ([60, 12, 33, 50, 7], 2), ([25, 25], 3)):
        tokens = esm_batch(alphabet, lengths, seed)
        real = tokens.ne(alphabet.padding_idx)
        with torch.inference_mode():
            want = eager(tokens, repr_layers=layers)["representations"]
            got = fast(tokens, repr_layers=layers)["representations"]
        for n in layers:
            diff = (got[n] - want[n])[real].abs().max().item()
            assert diff <= TOL, (lengths, n, diff)
    assert fast.layer_function.compiled, "compilation fell back to eager"
    # one graph for the padded batches (both layers, both shapes), one without a mask
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames_before
    assert graphs <= 2, graphs


@pytest.mark.slow
def test_mixed_precision_layers_compile():
    """bf16-mixed swaps nn.Linear for MixedLinear (no hooks): its layers compile, and
    agree with the same layers run eagerly (bf16 products: a bf16 tolerance)."""
    from virnuc_dask.worker.precision import to_mixed

    model, alphabet = load_esm(str(MODELS / "esm2_t2_64_tiny.pt"))
    to_mixed(model)
    eager = SdpaEsm2(model)
    fast = SdpaEsm2(model, compile_layers=True)
    assert not compiled.hooked(model)
    tokens = esm_batch(alphabet, [37, 5, 20], 1)
    real = tokens.ne(alphabet.padding_idx)
    with torch.inference_mode():
        want = eager(tokens, repr_layers=[model.num_layers])["representations"]
        got = fast(tokens, repr_layers=[model.num_layers])["representations"]
    n = model.num_layers
    assert got[n].dtype == torch.float32
    assert (got[n] - want[n])[real].abs().max().item() <= 2e-2
    assert fast.layer_function.compiled, "compilation fell back to eager"


@pytest.mark.slow
def test_dnabert_compiled_layers_agree_with_eager():
    model, tok = load_dnabert(str(MODELS / "dnabert_s_tiny"))
    rng = np.random.default_rng(5)
    for n_seqs, top in ((3, 120), (5, 200)):
        seqs = [
            "".join(rng.choice(list("ACGT"), size=int(rng.integers(10, top))))
            for _ in range(n_seqs)
        ]
        encoded = tok.encode(seqs)
        width = max(len(e) for e in encoded)
        ids = torch.full((n_seqs, width), tok.pad_id)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.as_tensor(e)
        mask = torch.arange(width)[None, :] < torch.tensor([len(e) for e in encoded])[:, None]
        with torch.inference_mode():
            want = model.compile_layers(False)(ids, mask)
            got = model.compile_layers(True)(ids, mask)
        assert model.layer_function.compiled
        assert (got - want).abs().max().item() <= TOL


def test_failed_compilation_runs_eagerly(monkeypatch, caplog):
    def failing(fn, **kwargs):
        def run(*args, **kw):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

        return run

    monkeypatch.setattr(compiled.torch, "compile", failing)
    model, alphabet = load_esm(str(MODELS / "esm2_t2_64_tiny.pt"))
    tokens = esm_batch(alphabet, [30, 9], 4)
    with torch.inference_mode():
        want = SdpaEsm2(model)(tokens, repr_layers=[2])["representations"][2]
        fast = SdpaEsm2(model, compile_layers=True)
        got = fast(tokens, repr_layers=[2])["representations"][2]
    assert not fast.layer_function.compiled
    assert "running it uncompiled" in caplog.text
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_other_errors_are_not_hidden(monkeypatch):
    monkeypatch.setattr(compiled.torch, "compile", lambda fn, **kw: fn)
    model, _ = load_esm(str(MODELS / "esm2_t2_64_tiny.pt"))
    layer = LayerFunction(esm_layer, True)
    with pytest.raises(RuntimeError):  # a width the layer does not have
        layer(model.layers[0], torch.zeros(1, 2, 4), None, None, None, None, 4)
    assert layer.compiled


def test_layers_with_hooks_run_uncompiled(monkeypatch):
    """The fp32 recompute of an overflowed batch converts each module as it runs (hooks):
    such calls bypass the compiled graph."""
    from virnuc_dask.worker.precision import computing_in_fp32

    calls = []
    monkeypatch.setattr(
        compiled.torch, "compile", lambda fn, **kw: lambda *a: calls.append(1) or fn(*a)
    )
    model, alphabet = load_esm(str(MODELS / "esm2_t2_64_tiny.pt"))
    fast = SdpaEsm2(model, compile_layers=True)
    tokens = esm_batch(alphabet, [30, 9], 6)
    with torch.inference_mode():
        want = fast(tokens, repr_layers=[2])["representations"][2]
        assert len(calls) == 2  # both layers through the compiled function
        model.to(torch.float16)
        with computing_in_fp32(fast):
            got = fast(tokens, repr_layers=[2])["representations"][2]
    assert len(calls) == 2 and got.dtype == torch.float32
    real = tokens.ne(alphabet.padding_idx)
    # fp16 weights computed in fp32: the weights' rounding, no more
    assert (got - want)[real].abs().max().item() <= 1e-2


def test_setting_environment_and_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("VIRNUC_DASK_COMPILE", raising=False)
    assert wanted("auto", "cpu") and wanted("on", "cpu") and not wanted("off", "cuda")
    assert not wanted("auto", "mps")
    monkeypatch.setenv("VIRNUC_DASK_COMPILE", "off")
    assert not wanted("on", "cpu")
    monkeypatch.setenv("VIRNUC_DASK_COMPILE", "On")
    assert wanted("off", "cpu")
    monkeypatch.setenv("VIRNUC_DASK_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        wanted("auto", "cpu")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "virnuc-dask" / "torch-compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


@pytest.mark.slow
def test_kernels_go_to_the_users_cache_in_a_fresh_process(tmp_path):
    """In a new process (as a worker is), with no TORCHINDUCTOR_CACHE_DIR of the user's:
    importing torch's compiler sets that variable to torch's node-local default
    (``/tmp/torchinductor_<user>``) before any layer is compiled; the kernels must still
    go to the user's cache."""
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "import virnuc_dask.worker.plugin\n"
        "from virnuc_dask.models.compiled import LayerFunction\n"
        "f = LayerFunction(lambda m, x: m(x).relu() * 2, compiled=True)\n"
        "x = torch.randn(3, 8)\n"
        "f(torch.nn.Linear(8, 8), x)\n"
        "assert f.compiled\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kernels = tmp_path / "virnuc-dask" / "torch-compile"
    assert kernels.is_dir() and any(kernels.rglob("*.py")), sorted(tmp_path.rglob("*"))[:20]
