"""Resume: only unfinished partitions are computed, and the outputs equal an uninterrupted run.

In-process runs cover half-written partitions, an interruption while the results
were being written and guarded resume; command-line runs on 2,000 generated reads
are killed for real (Ctrl-C, SIGTERM, SIGKILL of the client alone or of the process group)
and run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from helpers import REFERENCE, TINY, predict_command, wait_until, write_perf_reads

from virnuc_dask.config import load_settings
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.errors import OutputDirError

RESULTS = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "read_predictions.tsv",
    "failed_records.tsv",
)
ARRAYS = ("ids", "scores", "scores_source", "dnabert", "esm")
MIXED = REFERENCE / "dev" / "mixed" / "input.fa"


def assert_same_outputs(out: Path, expected: Path) -> None:
    """Result files byte for byte, stored arrays (scores, embeddings when kept) value for
    value."""
    for name in RESULTS:
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    a = zarr.open_group(out / "embeddings.zarr", mode="r")
    b = zarr.open_group(expected / "embeddings.zarr", mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in ARRAYS:
        if name in b:
            assert np.array_equal(a[name][:], b[name][:]), name


def digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def settings_for(out: Path, inputs=(MIXED,), **overrides):
    values = {
        "out": str(out),
        "length": 300,
        "precision": "fp32",
        "blocksize": 8192,
        "partition_rows": 32,
        **TINY,
        **overrides,
    }
    return load_settings(inputs=[str(p) for p in inputs], overrides=values)


@pytest.fixture(scope="module")
def complete(client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("complete")
    result = predict(settings_for(out), client)
    assert result.exit_code == 0 and result.partitions_reused == 0
    return out


def test_half_written_partitions_and_results_are_redone(client, complete, tmp_path):
    result = predict(settings_for(tmp_path), client)
    n = result.partitions
    assert n > 4
    # As if killed: two partitions had their chunks half written and no manifest entry,
    # and the results were being assembled; and one finished partition's scores chunk
    # was overwritten since (a bad disk block).
    for p in (1, n - 2):
        (tmp_path / "partitions" / f"p{p:07d}.json").unlink()
        for chunk in (
            tmp_path / "embeddings.zarr" / "ids" / "c" / str(p),
            tmp_path / "embeddings.zarr" / "scores" / "c" / str(p) / "0",
        ):
            chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    scores = tmp_path / "embeddings.zarr" / "scores" / "c" / "0" / "0"
    scores.write_bytes(b"\0" * 7)
    (tmp_path / ".parts").mkdir()
    (tmp_path / ".parts" / "prediction_results.txt.0000000").write_text("garbage")
    (tmp_path / "read_predictions.tsv").write_text("read_id\tlen")

    again = predict(settings_for(tmp_path), client)
    assert (again.partitions, again.partitions_reused) == (n, n - 3)
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    damaged = summary["partitions"].pop("damaged")
    assert summary["partitions"] == {"total": n, "computed": 3, "reused": n - 3}
    assert [d["partition"] for d in damaged] == [0]
    assert "scores/c/0" in damaged[0]["problem"]
    assert_same_outputs(tmp_path, complete)
    assert not (tmp_path / ".parts").exists()


def test_resuming_a_complete_run_changes_nothing(client, complete, tmp_path):
    for name in ("embeddings.zarr", "partitions", *RESULTS):
        src = complete / name
        if src.is_dir():
            subprocess.run(["cp", "-r", str(src), str(tmp_path / name)], check=True)
        else:
            (tmp_path / name).write_bytes(src.read_bytes())
    again = predict(settings_for(tmp_path), client)
    assert again.partitions_reused == again.partitions
    assert_same_outputs(tmp_path, complete)


def altered_esm(tmp_path: Path) -> str:
    """The tiny ESM-2 with one weight changed: same shapes, same file size, other model."""
    source = Path(TINY["esm_model"])
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    key = next(k for k in checkpoint["model"] if k.endswith("embed_tokens.weight"))
    checkpoint["model"][key] = checkpoint["model"][key] * 1.01
    target = tmp_path / "esm2_other.pt"
    torch.save(checkpoint, target)
    regression = source.with_name(source.stem + "-contact-regression.pt")
    (tmp_path / "esm2_other-contact-regression.pt").write_bytes(regression.read_bytes())
    return str(target)


def altered_dnabert(tmp_path: Path) -> str:
    target = tmp_path / "dnabert_other"
    target.mkdir()
    for path in Path(TINY["dnabert_model"]).iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    state = torch.load(target / "pytorch_model.bin", map_location="cpu", weights_only=True)
    state["embeddings.LayerNorm.bias"] = state["embeddings.LayerNorm.bias"] + 0.01
    torch.save(state, target / "pytorch_model.bin")
    return str(target)


def altered_classifier(tmp_path: Path) -> str:
    from virnuc_dask.models.classifier import load_classifier

    model = load_classifier(TINY["classifier"])
    with torch.no_grad():
        model.output_layer.bias += 0.1
    target = tmp_path / "other_classifier.pth"
    torch.save(model.state_dict(), target)
    return str(target)


CHANGES = {
    "inputs": lambda tmp: {"inputs": (REFERENCE / "dev" / "basic" / "input.fa",)},
    "length": lambda tmp: {"length": 500},
    "precision": lambda tmp: {"precision": "bf16"},
    "esm_model": lambda tmp: {"esm_model": altered_esm(tmp)},
    "dnabert_model": lambda tmp: {"dnabert_model": altered_dnabert(tmp)},
    "classifier": lambda tmp: {"classifier": altered_classifier(tmp)},
}


@pytest.mark.parametrize("what", sorted(CHANGES))
def test_resume_with_other_settings_is_refused(client, complete, tmp_path, what):
    before = digests(complete)
    with pytest.raises(OutputDirError, match=f"holds a run with different .*{what}.*--overwrite"):
        predict(settings_for(complete, **CHANGES[what](tmp_path)), client)
    assert digests(complete) == before


def test_a_model_moved_elsewhere_is_the_same_model(client, complete, tmp_path):
    source = Path(TINY["esm_model"])
    for name in (source.name, source.stem + "-contact-regression.pt"):
        (tmp_path / name).write_bytes((source.parent / name).read_bytes())
    result = predict(settings_for(complete, esm_model=str(tmp_path / source.name)), client)
    assert result.partitions_reused == result.partitions


def test_overwrite_starts_afresh_without_stale_partitions(client, complete, tmp_path):
    small = predict(settings_for(tmp_path, partition_rows=8), client)
    assert small.partitions > 8
    (tmp_path / "notes.txt").write_text("the user's own file")
    again = predict(settings_for(tmp_path, overwrite=True), client)
    assert again.partitions_reused == 0
    entries = sorted(p.name for p in (tmp_path / "partitions").iterdir())
    assert entries == [f"p{p:07d}.json" for p in range(again.partitions)]
    assert_same_outputs(tmp_path, complete)
    assert (tmp_path / "notes.txt").exists()


# -- the command line, killed for real ------------------------------------------------------


def cli(reads: Path, out: Path) -> list[str]:
    return [*predict_command(reads, length=500), "--out", str(out), "--partition-rows", "32"]


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> Path:
    """800 reads: about 60 partitions of 32 ORFs, enough for four interruptions."""
    return write_perf_reads(tmp_path_factory.mktemp("reads") / "reads.fa", 800, seed=5)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, reads) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = subprocess.run(cli(reads, out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def finished(out: Path) -> int:
    manifest = out / "partitions"
    return len(list(manifest.glob("p*.json"))) if manifest.is_dir() else 0


def session_alive(sid: int) -> list[int]:
    """Processes of session ``sid`` still alive (the CLI, its workers)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    alive.append(int(entry.name))
            except OSError:
                continue
    return alive


def interrupt(reads: Path, out: Path, how: str, after: int) -> int:
    """Start the CLI, interrupt it ``how`` once ``after`` partitions are finished; return
    the partitions finished when it and its workers are gone."""
    proc = subprocess.Popen(
        cli(reads, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def enough_finished() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        return finished(out) >= after

    wait_until(enough_finished, 300, interval=0.05, what=f"{after} finished partitions")
    if how == "sigkill-group":
        os.killpg(proc.pid, signal.SIGKILL)
    elif how == "sigkill-client":
        os.kill(proc.pid, signal.SIGKILL)
    elif how == "sigterm":
        os.kill(proc.pid, signal.SIGTERM)
    else:  # what a terminal does on Ctrl-C: SIGINT to the whole foreground group
        os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if how in ("ctrl-c", "sigterm"):
        assert proc.returncode == (130 if how == "ctrl-c" else 143), stderr
        assert "finished partitions are kept, re-run the command to resume" in stderr
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    # the workers go with their client
    wait_until(lambda: not session_alive(proc.pid), 30, interval=0.2, what="the workers to end")
    return finished(out)


@pytest.mark.slow
def test_cli_killed_mid_run_resumes_to_identical_outputs(uninterrupted, reads, tmp_path):
    """Ctrl-C, SIGTERM, SIGKILL of the client alone, SIGKILL of the whole process group,
    each while partitions are being embedded; then the same command to the end."""
    out = tmp_path / "out"
    total = json.loads((uninterrupted / "run_summary.json").read_text())["partitions"]["total"]
    done = 0
    for how in ("ctrl-c", "sigterm", "sigkill-client", "sigkill-group"):
        now = interrupt(reads, out, how, after=done + 5)
        assert done + 5 <= now < total, how
        done = now
    again = subprocess.run(cli(reads, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["partitions"] == {
        "total": total,
        "computed": total - done,
        "reused": done,
        "damaged": [],
    }
    assert_same_outputs(out, uninterrupted)
