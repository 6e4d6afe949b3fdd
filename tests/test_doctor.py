"""``virnuc-dask doctor`` on this machine (no GPU: every GPU line says so), its golden case,
and checks that must fail."""

from __future__ import annotations

import json
import shutil

import pytest
from distributed import Client, LocalCluster
from helpers import TINY, assert_same_table

from virnuc_dask.cli.main import main
from virnuc_dask.doctor import checks as doctor
from virnuc_dask.doctor import golden_case

KEYS = (
    "torch",
    "disk",
    "models",
    "checkpoint",
    "dask_cuda",
    "cluster",
    "gpus",
    "devices",
    "sdpa",
    "precision",
    "predict",
)


def test_doctor_passes_here_and_says_no_gpu(tmp_path, capsys):
    report = tmp_path / "doctor.json"
    code = main(["doctor", "--out", str(tmp_path), "--json", str(report), "-q"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines] == [f"✓ {key}" for key in KEYS]
    document = json.loads(report.read_text())
    assert document["ok"] is True and all(document[key]["ok"] for key in KEYS)
    for key in ("dask_cuda", "gpus", "devices"):
        assert "no GPU" in document[key]["text"], key
    assert "driver no GPU" in document["torch"]["text"]
    assert document["cluster"]["type"] == "LocalCluster"
    assert document["predict"]["max_score_diff"] <= 1e-5
    (worker,) = document["predict"]["workers"].values()
    assert worker["device"] == "cpu" and worker["precision"] == "fp32"
    assert worker["tf32"]["tf32_off"] is True
    sdpa = next(iter(document["sdpa"]["workers"].values()))
    assert set(sdpa) == {f"{m}/{p}" for m in ("esm", "dnabert") for p in ("fp32", "bf16", "fp16")}
    assert sdpa["esm/fp32"]["max_diff_vs_math"] < 1e-4
    assert {e["fused"] for e in sdpa.values()} == {"not applicable on CPU"}
    assert "math kernel not applicable on CPU" in document["sdpa"]["text"]
    (table,) = document["precision"]["workers"].values()
    assert table["layout"] == "tiny" and set(table["table"]) == {"bf16", "bf16-mixed"}
    for row in table["table"].values():
        assert row["esm_cosine_min"] > 0.99 and row["reads"] > 0 and row["fp32_seconds"] > 0
    assert "bf16-mixed cos≥" in document["precision"]["text"]
    assert not list(tmp_path.glob("doctor-*"))  # scratch files removed


def test_model_widths_are_checked(tmp_path):
    from virnuc_dask.models.demo import build_classifier

    assert doctor.check_models(TINY, TINY["classifier"]).ok
    wrong = build_classifier(tmp_path / "mlp.pth", input_dim=100)
    check = doctor.check_models(TINY, str(wrong))
    assert not check.ok and "classifier_input 100 != DNABERT-S + ESM-2" in check.text
    missing = doctor.check_models({"esm_model": str(tmp_path / "none.pt")}, None)
    assert not missing.ok and "cannot load" in missing.text


def test_too_little_disk_fails(tmp_path):
    check = doctor.check_disk(tmp_path, minimum=2**62)
    assert not check.ok and "GiB free at" in check.text


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_the_packaged_golden_case_is_what_predict_gives(client, tmp_path):
    """Made once with write_golden; making it again gives the same files."""
    golden_case.write_golden(tmp_path / "golden", tmp_path / "work", client)
    made, shipped = tmp_path / "golden", golden_case.golden_dir()
    assert (made / "input.fa").read_bytes() == (shipped / "input.fa").read_bytes()
    # the digests of each model, whatever the order of the models in the file
    digests = json.loads((made / "models.json").read_text())
    assert digests == json.loads((shipped / "models.json").read_text())
    # scores within the parity tolerance: their last digits differ from one CPU to the next
    assert_same_table(
        (made / "prediction_results.txt").read_text(),
        (shipped / "prediction_results.txt").read_text(),
        name="prediction_results.txt",
    )


def test_predict_check_fails_on_scores_off_the_golden_case(client, tmp_path, monkeypatch):
    shipped = golden_case.golden_dir()
    golden = tmp_path / "golden"
    shutil.copytree(shipped, golden)
    text = (golden / "prediction_results.txt").read_text().splitlines()
    name, label, s1, s2 = text[3].split("\t")
    text[3] = "\t".join([name, label, f"{float(s1) + 3e-5:.8g}", s2])
    (golden / "prediction_results.txt").write_text("\n".join(text) + "\n")
    monkeypatch.setattr(golden_case, "golden_dir", lambda: golden)
    check = golden_case.check_predict(client, tmp_path / "work", gpus=False)
    assert not check.ok and 2e-5 < check.detail["max_score_diff"] < 4e-5
    # a GPU node whose workers ran on the CPU fails too
    monkeypatch.setattr(golden_case, "golden_dir", lambda: shipped)
    check = golden_case.check_predict(client, tmp_path / "work2", gpus=True)
    assert not check.ok and "not as started" in check.text
    assert check.detail["max_score_diff"] <= 1e-5


def test_sdpa_on_a_gpu_fails_when_no_fused_kernel_takes_the_shape(monkeypatch):
    """On a GPU whose fused kernels refuse the models' shapes, attention would run the
    math kernel without a word: the check says so and fails. The stand-in: a device
    that says it is CUDA (the tensors stay on the CPU) and fused kernels that refuse."""
    import types

    import torch
    import torch.nn.functional as F

    from virnuc_dask.doctor import device_report

    real = F.scaled_dot_product_attention

    def fused_refuses(*args, **kwargs):
        from torch.nn.attention import SDPBackend
        from torch.nn.attention import _cur_sdpa_kernel_backends as allowed

        if SDPBackend.MATH not in allowed():
            raise RuntimeError("No available kernel. Aborting execution.")
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", fused_refuses)
    gpu = types.SimpleNamespace(type="cuda")
    q = torch.randn(1, 2, 8, 16)
    assert device_report.fused_kernel(gpu, [q, q, q], None) is False
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    assert device_report.fused_kernel(gpu, [q, q, q], None) is True
    assert device_report.fused_kernel(torch.device("cpu"), [q, q, q], None) == (
        device_report.NOT_APPLICABLE
    )
    reports = {
        "tcp://w:1": {
            "nvml_gpus": 1,
            "torch_devices": 1,
            "visible": None,
            "device": "cuda:0",
            "name": "GPU",
            "capability": "9.0",
            "memory_bytes": 2**36,
            "precision_auto": "bf16-mixed",
            "matmul_flops": {},
            "sdpa": {
                "esm/fp32": {
                    "usable": ["math"],
                    "max_diff_vs_math": 0.0,
                    "fused": False,
                    "ok": False,
                },
            },
        }
    }
    sdpa = next(c for c in doctor._worker_checks(reports) if c.key == "sdpa")
    assert not sdpa.ok and "esm/fp32 math 0.0e+00 MATH ONLY" in sdpa.text
