"""Training and evaluation through the dataflow, on a real LocalCluster and Zarr store."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import ORIGINAL_MLP_SOURCE, SENSE_CODONS, TINY, wait_until

from virnuc_dask.config import load_settings
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.errors import TrainingDataError
from virnuc_dask.models.classifier import load_classifier
from virnuc_dask.train.evaluate import evaluate
from virnuc_dask.train.inputs import train_inputs
from virnuc_dask.train.options import TrainOptions
from virnuc_dask.train.run import LOG_COLUMNS, train


def write_class_reads(
    path: Path, n: int, *, gc: float, seed: int, prefix: str, length: tuple[int, int] = (280, 320)
) -> Path:
    """Coding-like reads whose codons lean to GC (``gc`` > 0.5) or to AT (< 0.5)."""
    rng = random.Random(seed)
    weights = [np.prod([gc if b in "GC" else 1 - gc for b in codon]) for codon in SENSE_CODONS]
    with open(path, "w") as fh:
        for i in range(n):
            size = rng.randint(*length)
            seq = "".join(rng.choices(SENSE_CODONS, weights=weights, k=size // 3 + 1))[:size]
            fh.write(f">{prefix}_{i:05d}\n{seq}\n")
    return path


def _settings(out: Path, **extra) -> object:
    values = {
        "out": str(out),
        "length": 300,
        "esm_model": TINY["esm_model"],
        "dnabert_model": TINY["dnabert_model"],
        "partition_rows": 128,
        **extra,
    }
    return load_settings(overrides=values).with_absolute_paths()


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("classes")
    return {
        "viral": write_class_reads(d / "viral.fa", 120, gc=0.7, seed=1, prefix="vir"),
        "other": write_class_reads(d / "other.fa", 120, gc=0.3, seed=2, prefix="oth"),
        "viral_test": write_class_reads(d / "viral_test.fa", 40, gc=0.7, seed=3, prefix="vt"),
        "other_test": write_class_reads(d / "other_test.fa", 40, gc=0.3, seed=4, prefix="ot"),
    }


OPTIONS = TrainOptions(epochs=4, seed=7, lr=0.01)


@pytest.fixture(scope="module")
def trained(client, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    result = train(_settings(out), train_inputs([data["viral"]], [data["other"]]), OPTIONS, client)
    return result


def test_outputs_log_and_summary(trained):
    out = trained.out
    lines = (out / "training_log.tsv").read_text().splitlines()
    assert lines[0].split("\t") == list(LOG_COLUMNS)
    rows = [dict(zip(LOG_COLUMNS, line.split("\t"), strict=True)) for line in lines[1:]]
    s = trained.summary
    assert len(rows) == s["epochs_run"] and 1 <= s["epochs_run"] <= OPTIONS.epochs
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        for key in ("train_loss", "val_loss", "accuracy", "precision", "recall", "f1", "roc_auc"):
            assert np.isfinite(float(r[key]))
    data = s["data"]
    assert data["viral"]["orfs"] > 0 and data["other"]["orfs"] > 0
    assert data["viral"]["orfs"] + data["other"]["orfs"] == data["orfs"]
    assert s["split"]["validation"] == int(data["orfs"] * 0.1)
    assert s["selection"]["mode"] == "every stop-free frame"
    assert "no --protein-reference" in s["selection"]["description"]
    assert 1 <= s["best_epoch"] <= s["epochs_run"]
    best = rows[s["best_epoch"] - 1]
    assert float(best["val_loss"]) == pytest.approx(
        min(float(r["val_loss"]) for r in rows), rel=1e-5
    )
    # the classes differ in base composition: far above chance
    assert s["best"]["accuracy"] > 0.8 and s["best"]["roc_auc"] > 0.85
    assert json.loads((out / "training_summary.json").read_text()) == s


def test_store_labels_follow_the_files(trained):
    group = zarr.open_group(trained.out / "embeddings.zarr", mode="r")
    ids = group["ids"][:]
    labels = group["labels"][:]
    split = group["split"][:]
    assert len(ids) == len(labels) == len(split) == trained.summary["data"]["orfs"]
    assert all(
        label == (1 if i.startswith("vir_") else 0) for i, label in zip(ids, labels, strict=True)
    )
    assert set(np.unique(split)) <= {0, 1}
    assert (split == 1).sum() == trained.summary["split"]["validation"]


def test_model_loads_both_ways_with_identical_predictions(client, trained, data, tmp_path):
    """predict --classifier (restricted loader) and the original's plain torch.load of a
    pickled __main__.MLPClassifier give the same calls and scores on held-out reads."""
    model = load_classifier(trained.model)
    assert model.input_dim == sum(trained.summary["models"][m]["dim"] for m in ("dnabert", "esm"))
    out = tmp_path / "held_out"
    result = predict(
        _settings(out, classifier=str(trained.model)).replace(
            inputs=(str(data["viral_test"]), str(data["other_test"])), keep_embeddings=True
        ),
        client,
    )
    assert result.exit_code == 0
    script = ORIGINAL_MLP_SOURCE + textwrap.dedent(f"""
        import sys
        import numpy as np
        import zarr

        mlp_model = torch.load({str(trained.model)!r}, weights_only=False)
        assert type(mlp_model).__module__ == "__main__"
        mlp_model.eval()
        group = zarr.open_group({str(out / "embeddings.zarr")!r}, mode="r")
        x = np.concatenate([group["dnabert"][:], group["esm"][:]], axis=1)
        with torch.no_grad():
            probabilities = F.softmax(mlp_model(torch.from_numpy(x)), dim=1)
        _, predicted = torch.max(probabilities.data, 1)
        label_map = {{1: "virus", 0: "others"}}
        for seqid, pred, prob in zip(group["ids"][:], predicted, probabilities.numpy()):
            sys.stdout.write(f"{{seqid}}\\t{{label_map[pred.item()]}}\\t"
                             f"{{prob[0]}}\\t{{prob[1]}}\\n")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    theirs = [line.split("\t") for line in done.stdout.splitlines()]
    ours = [
        line.split("\t") for line in (out / "prediction_results.txt").read_text().splitlines()[1:]
    ]
    assert len(ours) == len(theirs) > 20
    assert [r[:2] for r in ours] == [r[:2] for r in theirs]
    assert (
        np.abs(
            np.array([[float(v) for v in r[2:]] for r in ours])
            - np.array([[float(v) for v in r[2:]] for r in theirs])
        ).max()
        <= 1e-6
    )
    calls = {r[1] for r in ours}
    assert calls == {"virus", "others"}


def test_interrupted_training_resumes_to_the_same_model(client, trained, data, tmp_path):
    """Killed after its second epoch, the rerun trains from the checkpoint: the model file
    is byte for byte the one of the uninterrupted run with the same seed."""
    settings = _settings(tmp_path / "resumed")
    inputs = train_inputs([data["viral"]], [data["other"]])

    def stop_after_two(event):
        if event.stage == "train" and event.done == 2:
            raise Stop

    with pytest.raises(Stop):
        train(settings, inputs, OPTIONS, client, progress=stop_after_two)
    assert not (tmp_path / "resumed" / "model.pth").exists()
    log = (tmp_path / "resumed" / "training_log.tsv").read_text().splitlines()
    assert len(log) == 3
    events = []
    result = train(
        settings,
        inputs,
        OPTIONS,
        client,
        progress=lambda event: events.append((event.stage, event.done)),
    )
    assert ("train", 2) in events and ("train", 1) not in events  # started after epoch 2
    embedded = [done for stage, done in events if stage == "embed"]
    assert embedded == [0]  # every partition reused
    assert result.model.read_bytes() == trained.model.read_bytes()

    def without_seconds(path: Path) -> list[list[str]]:
        return [line.split("\t")[:-1] for line in path.read_text().splitlines()]

    assert without_seconds(result.out / "training_log.tsv") == without_seconds(
        trained.out / "training_log.tsv"
    )


def test_another_seed_gives_another_model(client, trained, data, tmp_path):
    result = train(
        _settings(tmp_path / "seed8"),
        train_inputs([data["viral"]], [data["other"]]),
        TrainOptions(epochs=1, seed=8, lr=0.01),
        client,
    )
    assert result.model.read_bytes() != trained.model.read_bytes()
    assert result.summary["split"]["validation"] == trained.summary["split"]["validation"]


def test_changed_options_do_not_resume_silently(client, trained, data):
    from virnuc_dask.errors import OutputDirError

    with pytest.raises(OutputDirError, match="different options"):
        train(
            _settings(trained.out),
            train_inputs([data["viral"]], [data["other"]]),
            TrainOptions(epochs=4, seed=7, lr=0.02),
            client,
        )


def test_swapped_labels_invert_the_metrics(client, trained, data, tmp_path):
    swapped = train(
        _settings(tmp_path / "swapped"),
        train_inputs([data["other"]], [data["viral"]]),
        OPTIONS,
        client,
    )
    right = evaluate(
        _settings(tmp_path / "eval_right", classifier=str(trained.model)),
        (str(data["viral_test"]),),
        (str(data["other_test"]),),
        client,
    )
    wrong = evaluate(
        _settings(tmp_path / "eval_swapped", classifier=str(swapped.model)),
        (str(data["viral_test"]),),
        (str(data["other_test"]),),
        client,
    )
    for level in ("orf", "chunk", "read"):
        assert right.metrics[level]["accuracy"] > 0.75, level
        assert wrong.metrics[level]["accuracy"] < 0.25, level
        assert right.metrics[level]["roc_auc"] > 0.8 > 0.2 > wrong.metrics[level]["roc_auc"]
    # the same items are scored either way
    assert right.metrics["orf"]["n"] == wrong.metrics["orf"]["n"]
    doc = json.loads((tmp_path / "eval_right" / "evaluation.json").read_text())
    assert doc["metrics"]["read"]["n"] + sum(doc["metrics"]["read"]["unscored"].values()) == 80
    text = (tmp_path / "eval_right" / "evaluation.txt").read_text()
    assert text.splitlines()[0].split()[:3] == ["level", "n", "accuracy"]
    assert (tmp_path / "eval_right" / "viral" / "prediction_results.txt").is_file()
    from virnuc_dask.cli.main import main

    assert main(["report", str(tmp_path / "eval_right"), "--png", str(tmp_path / "png")]) == 0
    page = (tmp_path / "eval_right" / "report.html").read_text()
    assert "ROC curves" in page and page.count("<svg") == 2
    assert f"{right.metrics['read']['accuracy']:.4f}" in page
    assert {p.name for p in (tmp_path / "png").iterdir()} == {
        "roc_curves.png",
        "score_histograms.png",
    }


def test_a_class_without_usable_record_names_its_files(client, data, tmp_path):
    ambiguous = tmp_path / "ambiguous.fa"
    ambiguous.write_text("".join(f">n{i}\n{'ACGTN' * 70}\n" for i in range(5)))
    with pytest.raises(TrainingDataError, match=r"no usable other record: .*ambiguous\.fa"):
        train(
            _settings(tmp_path / "out"), train_inputs([data["viral"]], [ambiguous]), OPTIONS, client
        )


def test_protein_reference_restricts_the_frames(client, data, tmp_path):
    """Only frames found in the reference become training rows; the summary says so."""
    from Bio.Seq import Seq

    from virnuc_dask.core.chunking import chunk_record
    from virnuc_dask.core.formats import plan_blocks, read_block
    from virnuc_dask.core.training_orfs import ProteinReference, training_orfs

    reference = tmp_path / "ref.faa"
    with open(reference, "w") as fh:
        for path in (data["viral"], data["other"]):
            lines = path.read_text().splitlines()
            for i in range(0, 60, 2):  # the forward frame of the first 30 reads
                seq = lines[i + 1]
                fh.write(f">p{i}_{path.stem}\nM{Seq(seq[: len(seq) // 3 * 3]).translate()}K\n")
    result = train(
        _settings(tmp_path / "ref"),
        train_inputs([data["viral"]], [data["other"]], [reference]),
        TrainOptions(epochs=1),
        client,
    )
    group = zarr.open_group(tmp_path / "ref" / "embeddings.zarr", mode="r")
    ids = list(group["ids"][:])
    proteins = ProteinReference(
        r.sequence for block in plan_blocks([str(reference)]) for r in read_block(block)
    )
    expected, unrestricted = [], 0
    for path in (data["viral"], data["other"]):
        for block in plan_blocks([str(path)]):
            for record in read_block(block):
                for chunk_id, chunk in chunk_record(record.id, record.sequence, 300):
                    expected += [o.id for o in training_orfs(chunk_id, chunk, proteins)]
                    unrestricted += len(training_orfs(chunk_id, chunk, None))
    assert ids == expected
    assert 60 <= len(ids) < unrestricted / 2
    assert {i.split("_chunk_")[0] for i in ids if i.endswith("chunk_1F1")} == {
        f"{p}_{k:05d}" for p in ("vir", "oth") for k in range(0, 30)
    }
    assert result.summary["selection"]["mode"] == "protein reference"
    assert result.summary["selection"]["protein_reference"] == [str(reference)]


def train_argv(data: dict[str, Path], out: Path, *options: str) -> list[str]:
    """``train`` of the held-out reads on the tiny models, one worker of one thread, with
    ``options``; it ends with ``--out OUT -q``."""
    return [
        "train",
        "--viral",
        str(data["viral_test"]),
        "--other",
        str(data["other_test"]),
        "--length",
        "300",
        "--esm-model",
        TINY["esm_model"],
        "--dnabert-model",
        TINY["dnabert_model"],
        *options,
        "--workers",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "-q",
    ]


def test_train_command_line(data, tmp_path):
    from virnuc_dask.cli.main import main

    out = tmp_path / "cli"
    argv = train_argv(data, out, "--epochs", "2", "--seed", "3")
    assert main(argv) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["options"]["epochs"] == 2 and summary["options"]["seed"] == 3
    assert summary["options"]["lr"] == 2e-4 and summary["options"]["batch_size"] == 32
    assert len((out / "training_log.tsv").read_text().splitlines()) == 3
    assert load_classifier(out / "model.pth").input_dim > 0
    assert main([*argv[:-3], "--classifier", TINY["classifier"], "--out", str(out)]) == 1


def test_kill_during_training_then_rerun_resumes(data, tmp_path):
    """kill -9 of the whole command (client, scheduler, workers) once two epochs are logged;
    the rerun keeps the finished epochs and continues after the last checkpoint."""
    import os
    import signal

    out = tmp_path / "killed"
    argv = train_argv(
        data, out, "--epochs", "10", "--patience", "10", "--seed", "5", "--partition-rows", "64"
    )
    log = out / "training_log.tsv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "virnuc_dask", *argv],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def three_epochs_logged() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()
            return log.is_file() and len(log.read_text().splitlines()) >= 3

        wait_until(three_epochs_logged, 300, interval=0.2, what="three epochs in the log")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    before = log.read_text().splitlines()
    assert len(before) >= 3 and not (out / "model.pth").exists()
    from virnuc_dask.cli.main import main

    assert main([*argv[:-1]]) == 0
    after = (out / "training_log.tsv").read_text().splitlines()
    assert len(after) == 11
    # the epochs logged before the kill are kept as they were, the rest follow on
    assert after[: len(before)] == before
    assert [int(line.split("\t")[0]) for line in after[1:]] == list(range(1, 11))
    assert json.loads((out / "training_summary.json").read_text())["epochs_run"] == 10


@pytest.mark.slow
def test_default_hyper_parameters_learn_base_composition(client, tmp_path):
    """A few thousand reads whose classes differ only in codon GC content: the original's
    hyper-parameters reach a validation accuracy far above chance in a few epochs."""
    viral = write_class_reads(tmp_path / "v.fa", 1000, gc=0.6, seed=21, prefix="v")
    other = write_class_reads(tmp_path / "o.fa", 1000, gc=0.4, seed=22, prefix="o")
    result = train(
        _settings(tmp_path / "out", partition_rows=1024),
        train_inputs([viral], [other]),
        TrainOptions(epochs=5),
        client,
    )
    best = result.summary["best"]
    assert result.summary["data"]["orfs"] > 3000
    assert best["accuracy"] > 0.9 and best["roc_auc"] > 0.95
