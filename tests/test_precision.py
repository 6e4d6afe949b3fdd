"""Precision policy, and bf16/fp16 against fp32 on the reference cases.

On the tiny reference models (CPU) the measured agreement is, over the 8 cases:
bf16 cosine >= 0.99997, 0-5 ORF labels flipped per case (score differences up to
0.08); fp16 cosine > 0.999999, 0-1 flipped (score differences <= 0.005). fp16's
three extra mantissa bits are why GPUs without bf16 (compute capability 7.x) run
fp16 rather than fp32.
"""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import CASES, LENGTHS, TINY, read_fasta_pairs

from virnuc_dask.worker.agreement import precision_agreement
from virnuc_dask.worker.plugin import resolve_precision

pytestmark = pytest.mark.usefixtures("one_thread")

logger = logging.getLogger(__name__)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_low_precisions_agree_with_fp32(reference, case, length):
    ref = reference / "dev" / case / f"L{length}"
    nucleotides = [s for _, s in read_fasta_pairs(ref / "input_identified_nucleotide.fa")]
    proteins = [s for _, s in read_fasta_pairs(ref / "input_identified_protein.faa")]
    result = precision_agreement(**TINY, nucleotides=nucleotides, proteins=proteins)
    bf16, fp16 = result["bf16"], result["fp16"]
    orfs = len(proteins)
    for model in ("esm", "dnabert"):
        assert bf16[f"{model}_cosine_min"] >= 0.9999
        assert fp16[f"{model}_cosine_min"] >= 0.99999
        assert fp16[f"{model}_cosine_min"] >= bf16[f"{model}_cosine_min"]
    assert bf16["labels_flipped"] <= 0.03 * orfs
    assert fp16["labels_flipped"] <= max(1, 0.01 * orfs)
    assert fp16["labels_flipped"] <= bf16["labels_flipped"]
    assert fp16["max_score_diff"] < bf16["max_score_diff"] < 0.15


def test_unrunnable_precision_is_reported_not_raised(reference, monkeypatch):
    import virnuc_dask.worker.plugin as plugin

    monkeypatch.setitem(plugin.DTYPES, "fp8", torch.float8_e4m3fn)  # no CPU kernels
    nucleotides = [
        s
        for _, s in read_fasta_pairs(
            reference / "dev" / "basic" / "L500" / "input_identified_nucleotide.fa"
        )
    ][:4]
    proteins = [
        s
        for _, s in read_fasta_pairs(
            reference / "dev" / "basic" / "L500" / "input_identified_protein.faa"
        )
    ][:4]
    result = precision_agreement(
        **TINY, nucleotides=nucleotides, proteins=proteins, precisions=("fp8",)
    )
    assert "error" in result["fp8"]


@pytest.mark.parametrize(
    "capability, expected",
    [
        ((9, 0), "bf16-mixed"),
        ((8, 0), "bf16-mixed"),
        ((8, 6), "bf16-mixed"),
        ((7, 5), "fp16"),
        ((7, 0), "fp16"),
        ((6, 1), "fp32"),
        ((5, 2), "fp32"),
    ],
)
def test_auto_precision_by_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected


def test_cpu_and_explicit_precisions():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    for precision in ("fp32", "bf16-mixed", "bf16", "fp16"):
        assert resolve_precision(precision, torch.device("cpu")) == precision


def test_an_fp32_worker_turns_tf32_off_whatever_the_site_set(monkeypatch):
    from virnuc_dask.config import Settings
    from virnuc_dask.worker.plugin import ModelPlugin, ModelSpec

    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        plugin = ModelPlugin(ModelSpec.from_settings(Settings(**TINY, precision="fp32")))
        plugin.load()
        state = plugin.status()["matmul"]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])
    assert state["cuda_matmul_allow_tf32"] is False and state["cudnn_allow_tf32"] is False
    assert state["float32_matmul_precision"] == "highest"
    assert state["NVIDIA_TF32_OVERRIDE"] == "0" and state["tf32_off"] is True


def test_mixed_precision_against_casting_on_the_tiny_models(reference):
    """bf16 by casting every weight against bf16 matrix products with an fp32 residual
    stream (``bf16-mixed``), both against fp32; the figures are logged (pytest -o
    log_cli=true --log-cli-level=INFO)."""
    ref = reference / "dev" / "basic" / "L500"
    nucleotides = [s for _, s in read_fasta_pairs(ref / "input_identified_nucleotide.fa")]
    proteins = [s for _, s in read_fasta_pairs(ref / "input_identified_protein.faa")]
    result = precision_agreement(
        **TINY, nucleotides=nucleotides, proteins=proteins, precisions=("bf16", "bf16-mixed")
    )
    for name, r in result.items():
        logger.info(
            f"{name}: ESM-2 cosine min {r['esm_cosine_min']:.6f} mean "
            f"{r['esm_cosine_mean']:.6f}; DNABERT-S min {r['dnabert_cosine_min']:.6f} mean "
            f"{r['dnabert_cosine_mean']:.6f}; {r['labels_flipped']}/{r['orfs']} flipped; "
            f"max score diff {r['max_score_diff']:.4f}; {r['seconds']:.2f} s"
        )
    cast, mixed = result["bf16"], result["bf16-mixed"]
    for model in ("esm", "dnabert"):
        assert mixed[f"{model}_cosine_min"] >= cast[f"{model}_cosine_min"]
        assert mixed[f"{model}_cosine_mean"] >= cast[f"{model}_cosine_mean"]
    assert mixed["max_score_diff"] <= cast["max_score_diff"]
