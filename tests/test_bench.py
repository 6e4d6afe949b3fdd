"""``virnuc-dask bench`` on a tiny input with tiny models, and its FLOP accounting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import TINY
from torch.utils.flop_counter import FlopCounterMode

from virnuc_dask.bench.measure import REQUIRED_KEYS
from virnuc_dask.cli.main import main
from virnuc_dask.models.flops import matmul_peak, module_shape


def test_bench_runs_and_writes_sane_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--size",
            "tiny",
            "--reads",
            "24",
            "--workers",
            "1",
            "--precision-orfs",
            "16",
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    assert "speedup vs original" in capsys.readouterr().out
    result = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        assert isinstance(result[key], int | float) and math.isfinite(result[key]), key
    assert result["matmul_peak_flops"] > 1e8
    assert 0 < result["esm_utilization"] < 1.5 and 0 < result["dnabert_utilization"] < 1.5
    assert 0.5 < result["padding_efficiency"] <= 1
    assert result["pipeline_reads_per_s"] > 0 and result["original_style_reads_per_s"] > 0
    assert result["speedup_vs_original"] == pytest.approx(
        result["pipeline_reads_per_s"] / result["original_style_reads_per_s"]
    )
    assert result["workers"] == 1 and [r["workers"] for r in result["scaling"]] == [1]
    assert result["reads"] == 24 and result["orfs"] >= 24
    # the pipeline and the original way computed the same scores
    assert result["original_style"]["max_score_diff_vs_pipeline"] <= 1e-5
    # the bound: the original way's time over the pipeline's FLOPs run at the peak
    original = result["original_style"]
    at_peak = (
        sum(result["stages"][m]["flops"] for m in ("esm", "dnabert")) / result["matmul_peak_flops"]
    )
    assert result["speedup_bound"] == pytest.approx(original["seconds"] / at_peak)
    assert original["speedup_bound_embedding"] == pytest.approx(
        (original["timings_s"]["esm"] + original["timings_s"]["dnabert"]) / at_peak, rel=1e-3
    )
    assert result["speedup_bound"] >= original["speedup_bound_embedding"] > 1
    assert all(0 < u < 1.5 for u in original["utilization"].values())
    assert 0 < result["store_share"] < 1
    assert result["scaling"][0]["store_seconds"] > 0
    interleaved = result["original_style"]["interleaved"]
    assert interleaved["orfs"] == result["orfs"] and interleaved["embedding_speedup"] > 0
    assert set(result["load_average"]) >= {"start", "predict_1w", "original"}
    for stage in ("esm", "dnabert"):
        assert result["stages"][stage]["tokens"] > 0
        assert result["prefetch"][stage]["ratio"] > 0
    for precision in ("bf16", "fp16"):
        p = result["precision_agreement"][precision]
        assert p["orfs"] == 16 and p["esm_cosine_min"] > 0.99


def test_bench_rejects_bad_worker_counts(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--workers", "0"])
    assert "worker counts must be positive" in capsys.readouterr().err


def test_flops_match_torch_flop_counter_on_fair_esm():
    from virnuc_dask.models.esm2 import load_esm

    model, _ = load_esm(TINY["esm_model"])
    length, e, vocab = 50, model.embed_dim, len(model.alphabet)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randint(4, 24, (1, length)), repr_layers=[model.num_layers])
    lm_head = 2 * length * (e * e + e * vocab)  # fair-esm computes logits; embedding doesn't
    assert module_shape(model).flops_of(np.array([length])) == counter.get_total_flops() - lm_head


def test_dnabert_flops_count_every_linear_layer():
    from virnuc_dask.models.dnabert import load_dnabert

    model, _ = load_dnabert(TINY["dnabert_model"])
    length, cfg = 40, model.config
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randint(5, 100, (1, length)))  # SDPA on CPU is not counted by torch
    attention = 4 * length**2 * cfg.hidden_size * cfg.num_hidden_layers
    assert module_shape(model).flops_of(np.array([length])) == counter.get_total_flops() + attention


def test_matmul_peak_is_a_rate():
    assert 1e8 < matmul_peak("cpu", size=256, repeats=2, rounds=1) < 1e14


@pytest.mark.parametrize(("size", "esm_params"), [("650m", 651_043_254), ("real", 2_839_005_634)])
def test_gpu_sizes_are_the_published_layouts(size, esm_params):
    """``--size 650m|real`` build ESM-2 650M / 3B (fair-esm's own class, counted on the meta
    device) and DNABERT-S's 117M-parameter encoder (with its 4096-token vocabulary)."""
    import esm
    from esm.model.esm2 import ESM2

    from virnuc_dask.models.dnabert_encoder import DnabertConfig, DnabertS
    from virnuc_dask.models.registry import embedding_model

    e = embedding_model("esm").bench_layouts[size]
    d = embedding_model("dnabert").bench_layouts[size]
    with torch.device("meta"):
        model = ESM2(
            num_layers=e["layers"],
            embed_dim=e["dim"],
            attention_heads=e["heads"],
            alphabet=esm.Alphabet.from_architecture("ESM-1b"),
            token_dropout=True,
        )
        dnabert = DnabertS(
            DnabertConfig(
                vocab_size=4096,
                hidden_size=d["hidden"],
                num_hidden_layers=d["layers"],
                num_attention_heads=d["heads"],
                intermediate_size=d["intermediate"],
            )
        )
    assert sum(p.numel() for p in model.parameters()) == esm_params
    assert 116e6 < sum(p.numel() for p in dnabert.parameters()) < 118e6


def test_stage_figures_of_concurrent_workers_are_the_machine_rate():
    """Stage seconds of a run are summed over its workers, which embed at the same time:
    with two workers the machine did the FLOPs in half the summed seconds."""
    from virnuc_dask.bench.throughput import stage_figures

    stage = {"seconds": 10.0, "real_tokens": 900, "padded_tokens": 1000, "batches": 3}
    one = stage_figures(stage, flops=1e12, peak=1e11)
    two = stage_figures(stage, flops=1e12, peak=1e11, workers=2)
    assert one["utilization"] == pytest.approx(1.0) and one["tokens_per_s"] == pytest.approx(90)
    assert two["utilization"] == pytest.approx(2.0) and two["tokens_per_s"] == pytest.approx(180)
    assert two["seconds"] == pytest.approx(5.0) and two["worker_seconds"] == pytest.approx(10.0)
    assert two["padding_efficiency"] == one["padding_efficiency"] == pytest.approx(0.9)


@pytest.mark.parametrize("given", [False, True])
def test_bench_classifier_takes_both_embedding_widths(tmp_path, given):
    """The classifier built for the bench reads DNABERT-S + ESM-2 embeddings: of the
    ``--size small`` models (256 + 320), or of the files given instead (64 + 64)."""
    from virnuc_dask.bench.kit import build_models
    from virnuc_dask.models.classifier import load_classifier

    files = {}
    if given:
        files = {"esm_model": TINY["esm_model"], "dnabert_model": TINY["dnabert_model"]}
    paths = build_models(tmp_path, "small", **files)
    assert load_classifier(paths["classifier"]).input_dim == (128 if given else 576)


def test_more_workers_than_gpus_is_refused_at_once(monkeypatch, tmp_path, capsys):
    """A one-GPU node: --workers 1,2 cannot start two GPU workers; no waiting for them."""
    import time

    import virnuc_dask.cluster.workers as workers

    monkeypatch.setattr(workers, "visible_gpus", lambda gpus=None: ["0"])
    t = time.monotonic()
    code = main(
        ["bench", "--size", "tiny", "--reads", "8", "--workers", "1,2", "--work-dir", str(tmp_path)]
    )
    assert code == 1 and time.monotonic() - t < 10
    err = capsys.readouterr().err
    assert (
        "--workers 1,2 asks for 2 GPU workers, but this node has 1 visible GPU(s) (0)" in err
        and "use --workers 1" in err
    )
    assert not (tmp_path / "models").exists()  # refused before any work


def test_fewer_workers_started_than_asked_ends_the_wait(monkeypatch, tmp_path):
    """Whatever the reason a cluster starts fewer workers, the bench does not wait forever."""
    from distributed import LocalCluster

    import virnuc_dask.cluster.start as start
    from virnuc_dask.bench.throughput import run_pipeline
    from virnuc_dask.config import load_settings
    from virnuc_dask.errors import VirnucError

    monkeypatch.setattr(
        start,
        "local_cluster",
        lambda settings, security=None: LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ),
    )
    settings = load_settings(inputs=[], overrides={"out": str(tmp_path / "p"), **TINY})
    with pytest.raises(
        VirnucError, match="1 of the 2 workers asked for started within 2 s; use --workers 1"
    ):
        run_pipeline(settings, 2, timeout=2)


def test_read_calls_follow_the_prediction_rule():
    from virnuc_dask.worker.agreement import read_calls

    ids = ["r1_chunk_1F1", "r1_chunk_1R2", "r1_chunk_2F1", "r2_chunk_1F3", "r3_chunk_1F1"]
    scores = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.5, 0.5], [0.8, 0.2]])
    # r1: chunk 1 max others 0.6, max virus 0.7 -> virus; chunk 2 others; 1 of 2 -> virus.
    # r2: a tie is virus. r3: others.
    assert read_calls(ids, scores) == {"r1": True, "r2": True, "r3": False}
    flipped = scores.copy()
    flipped[1] = [0.9, 0.1]  # r1 chunk 1 now others: 0 of 2 chunks
    assert read_calls(ids, flipped)["r1"] is False


@pytest.mark.parametrize(
    ("gpus", "counts"), [([], (1, 2)), (["0"], (1,)), (["0", "1", "2"], (1, 2))]
)
def test_the_default_worker_counts_fit_the_node(gpus, counts):
    """Without --workers a one-GPU node benches one worker instead of refusing 1,2."""
    from virnuc_dask.bench.throughput import check_worker_counts, default_worker_counts

    assert default_worker_counts(gpus) == counts
    check_worker_counts(counts, gpus)  # accepted
