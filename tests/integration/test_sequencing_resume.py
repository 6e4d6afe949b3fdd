"""A sequencing run killed with SIGKILL mid-run resumes to the outputs of an uninterrupted
run, each sample from its own finished partitions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import predict_command, write_perf_reads, write_sequencing_run

RESULTS = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "read_predictions.tsv",
    "failed_records.tsv",
    "pair_predictions.tsv",
)


def cli(sheet: Path, out: Path) -> list[str]:
    return [
        *predict_command(length=500),
        "--samplesheet",
        str(sheet),
        "--out",
        str(out),
        "--partition-rows",
        "32",
    ]


@pytest.fixture(scope="module")
def sheet(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("seqrun")
    path = write_sequencing_run(folder)
    write_perf_reads(folder / "large.fa", 600, seed=5)
    path.write_text(path.read_text() + "large,,,large.fa\n")
    return path


def finished(out: Path) -> int:
    manifest = out / "large" / "partitions"
    return len(list(manifest.glob("p*.json"))) if manifest.is_dir() else 0


def start_until_finished(sheet: Path, out: Path, partitions: int) -> subprocess.Popen:
    """The CLI started on ``sheet``, once the large sample has ``partitions`` finished."""
    proc = subprocess.Popen(
        cli(sheet, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while finished(out) < partitions:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_a_killed_sequencing_run_resumes_to_identical_outputs(sheet, tmp_path):
    whole = tmp_path / "whole"
    proc = subprocess.run(cli(sheet, whole), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    total = json.loads((whole / "large" / "run_summary.json").read_text())["partitions"]["total"]

    out = tmp_path / "out"
    proc = start_until_finished(sheet, out, 5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    done = finished(out)
    assert 5 <= done < total

    again = subprocess.run(cli(sheet, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "large" / "run_summary.json").read_text())
    assert summary["partitions"]["reused"] >= done
    run = json.loads((out / "run_summary.json").read_text())
    assert [s["sample"] for s in run["samples"]] == [
        "casava",
        "slash",
        "single",
        "contigs",
        "large",
    ]
    for sample in ("casava", "slash", "single", "contigs", "large"):
        for name in RESULTS:
            a, b = out / sample / name, whole / sample / name
            assert a.exists() == b.exists(), (sample, name)
            if b.exists():
                assert a.read_bytes() == b.read_bytes(), (sample, name)
    assert (out / "samples.tsv").read_text().split("\n")[0] == (
        (whole / "samples.tsv").read_text().split("\n")[0]
    )


@pytest.mark.slow
def test_ctrl_c_ends_a_sequencing_run_without_waiting_for_its_samples(sheet, tmp_path):
    """Ctrl-C while a sample is being embedded: the run stops at once (exit 130), with
    the samples in flight stopped where they are, not run to their end."""
    out = tmp_path / "out"
    proc = start_until_finished(sheet, out, 3)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "finished partitions are kept, re-run the command to resume" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    # The large sample (about 29 partitions) was not run to its end after the interrupt.
    assert not (out / "large" / "run_summary.json").exists(), stderr
    assert finished(out) < 20, finished(out)
