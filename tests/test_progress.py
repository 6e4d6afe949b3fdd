"""Progress: the state behind the display, periodic log lines, the live display under tmux,
and worker log records reaching the client."""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster
from helpers import REFERENCE, predict_command, wait_until
from rich.console import Console

from virnuc_dask.cli.logs import forward_worker_logs
from virnuc_dask.cli.progress import TerminalProgress
from virnuc_dask.cli.progress_view import stage_table, status_line
from virnuc_dask.cli.run_state import RunProgress
from virnuc_dask.cluster.workers import WORKER_ENV
from virnuc_dask.events import ProgressEvent
from virnuc_dask.partition_result import ModelStats, PartitionResult


def partition(
    worker: str, orfs: int, dn_tokens: int, dn_s: float, esm_tokens: int, esm_s: float
) -> PartitionResult:
    def stats(tokens: int, seconds: float, padding: int) -> ModelStats:
        return ModelStats(
            sequences=orfs,
            rows=orfs,
            real_tokens=tokens,
            padded_tokens=tokens + padding,
            seconds=seconds,
        )

    return PartitionResult(
        partition=0,
        row_start=0,
        rows=orfs,
        worker=worker,
        models={"dnabert": stats(dn_tokens, dn_s, 10), "esm": stats(esm_tokens, esm_s, 5)},
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_state_follows_the_pipeline_events():
    clock = Clock()
    state = RunProgress(clock=clock)
    state.record(ProgressEvent("models", 0, 1))
    clock.now += 5
    state.record(ProgressEvent("models", 1, 1, precision="fp32", device="cpu"))
    state.record(ProgressEvent("read", 0, 2))
    clock.now += 1
    state.record(ProgressEvent("read", 2, 2, reads=30, orfs=400))
    state.record(ProgressEvent("embed", 0, 4, orfs_total=400, orfs_reused=100))
    clock.now += 10
    state.record(
        ProgressEvent("embed", 1, 3, partitions=(partition("w1", 100, 500, 1.0, 900, 3.0),))
    )
    clock.now += 10
    state.record(
        ProgressEvent("embed", 2, 3, partitions=(partition("w2", 100, 500, 2.0, 900, 6.0),))
    )

    assert state.stage("models").finished == 105.0
    assert state.stage("read").counts == {"reads": 30, "orfs": 400}
    esm = state.stage("esm")
    assert (esm.done, esm.total, esm.finished) == (300, 400, None)
    # 200 ORFs computed in 20 s -> 10 ORF/s; 100 left -> 10 s
    assert state.embed_rate(clock.now) == pytest.approx(10.0)
    assert state.eta("esm", clock.now) == pytest.approx(10.0)
    assert state.tokens_per_s("esm") == pytest.approx(1800 / 9.0)
    assert state.model_share("esm") == pytest.approx(9.0 / 12.0)
    assert state.workers["w1"].orfs_per_s == pytest.approx(100 / 4.0)
    assert state.workers["w2"].partitions == 1

    clock.now += 10
    state.record(
        ProgressEvent("embed", 3, 3, partitions=(partition("w1", 100, 500, 1.0, 900, 3.0),))
    )
    assert state.stage("esm").finished == clock.now
    assert state.stage("dnabert").done == 400
    assert state.eta("esm", clock.now) is None

    line = status_line(state)
    assert "reading + translating: 2/2 blocks · 30 reads · 400 ORFs ✓" in line
    assert "embedding: 400/400 ORFs · 3/4 partitions" in line
    assert "w1 2 partitions 200 ORFs" in line and "w2 1 partitions 100 ORFs" in line
    assert "classifying" not in line  # not started


def test_reading_and_embedding_advance_together():
    """The run reads on while it embeds: both rows move, and the embedding's totals
    grow as blocks are read instead of starting over."""
    clock = Clock()
    state = RunProgress(clock=clock)
    state.record(ProgressEvent("read", 1, 4, reads=10, orfs=200))
    state.record(ProgressEvent("embed", 0, 2, orfs_total=200, orfs_reused=0))
    clock.now += 10
    state.record(
        ProgressEvent("embed", 1, 2, partitions=(partition("w1", 100, 500, 1.0, 900, 3.0),))
    )
    state.record(ProgressEvent("read", 3, 4, reads=30, orfs=600))
    state.record(ProgressEvent("embed", 1, 4, orfs_total=600))
    esm = state.stage("esm")
    assert (esm.done, esm.total, esm.finished) == (100, 600, None)
    assert esm.counts["partitions"] == 1 and esm.counts["partitions_total"] == 4
    read = state.stage("read")
    assert (read.done, read.total, read.finished) == (3, 4, None)
    line = status_line(state)
    assert "reading + translating: 3/4 blocks" in line
    assert "embedding: 100/600 ORFs · 1/4 partitions" in line


def test_stage_table_has_a_row_per_stage():
    from rich.console import Console

    state = RunProgress()
    state.record(ProgressEvent("embed", 0, 2, orfs_total=50, orfs_reused=0))
    state.record(
        ProgressEvent("embed", 1, 2, partitions=(partition("tcp://w:1", 25, 100, 1.0, 200, 1.0),))
    )
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(stage_table(state))
    text = console.export_text()
    for label in (
        "loading models",
        "reading + translating",
        "embedding DNABERT-S",
        "embedding ESM-2",
        "classifying",
        "writing results",
    ):
        assert label in text
    assert "25/50 ORFs · 1/2 partitions" in text


def test_non_terminal_logs_a_line_every_interval(caplog):
    caplog.set_level(logging.INFO, logger="virnuc_dask.cli.progress")
    with TerminalProgress(enabled=False, interval=0.2) as progress:
        progress(ProgressEvent("read", 0, 1))
        time.sleep(0.7)
        progress(ProgressEvent("read", 1, 1, reads=3, orfs=4))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress")]
    assert len(lines) >= 3  # at least two periodic lines and the closing one
    assert "reading + translating: 0/1 blocks" in lines[0]
    assert "1/1 blocks · 3 reads · 4 ORFs ✓" in lines[-1]


def cli(out: Path, *extra: str, case: str = "mixed") -> list[str]:
    return [*predict_command(REFERENCE / "dev" / case / "input.fa"), "--out", str(out), *extra]


def test_cli_without_terminal_prints_periodic_progress_lines(tmp_path):
    proc = subprocess.run(
        cli(
            tmp_path / "out",
            "--partition-rows",
            "16",
            "--progress-interval",
            "0.5",
            "--log-file",
            str(tmp_path / "log"),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " progress " in line]
    assert len(lines) >= 3, proc.stderr
    final = lines[-1]
    assert "embedding: 290/290 ORFs · 19/19 partitions" in final
    assert "writing results: 1/1 blocks · 80 reads ✓" in final
    assert re.search(r"workers: tls://\S+ 19 partitions 290 ORFs [\d.]+ ORF/s", final)
    # the end-of-run summary, in the terminal and in the log file
    for text in (proc.stderr, (tmp_path / "log").read_text()):
        assert re.search(
            r"^reads\s+80: \d+ viral, \d+ others, 13 without ORF, 0 failed$", text, re.M
        ), text
        assert re.search(r"^worker tls://\S+\s+19 partitions, 290 ORFs", text, re.M)


def test_quiet_prints_nothing_on_success(tmp_path):
    proc = subprocess.run(
        cli(tmp_path / "out", "--quiet", case="basic"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_live_display_in_a_terminal(tmp_path):
    # a tmux server of its own (-L), so that nothing else on the machine is touched
    tmux = ["tmux", "-L", f"virnuc-test-{tmp_path.name}", "-f", "/dev/null"]
    # the pane's own size, not a COLUMNS/LINES the test runner may have exported
    command = "env -u COLUMNS -u LINES " + " ".join(cli(tmp_path / "out", "--partition-rows", "16"))
    done = tmp_path / "done"
    subprocess.run(
        [
            *tmux,
            "new-session",
            "-d",
            "-s",
            "run",
            "-x",
            "200",
            "-y",
            "50",
            f"{command}; echo $? > {done}; sleep 60",
        ],
        check=True,
    )
    frames = []
    try:

        def captured_until_done() -> bool:
            frames.append(
                subprocess.run(
                    [*tmux, "capture-pane", "-p", "-t", "run"], capture_output=True, text=True
                ).stdout
            )
            return done.exists()

        wait_until(captured_until_done, 120, interval=0.2, what="the run in tmux to end")
        time.sleep(0.3)
        final = subprocess.run(
            [*tmux, "capture-pane", "-p", "-S", "-100", "-t", "run"], capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    assert done.read_text().strip() == "0", final
    # while embedding: both model rows part-way, and a row for the worker
    running = [
        f
        for f in frames
        if re.search(r"^  embedding ESM-2 .* [1-9]\d*/290 ORFs · \d+/19 partitions", f, re.M)
        and re.search(r"^  embedding DNABERT-S .* [1-9]\d*/290 ORFs", f, re.M)
    ]
    assert running, "no frame caught during embedding:\n" + "\n=====\n".join(frames[-20:])
    frame = running[-1]
    assert re.search(r"^worker\s+tasks\s+partitions\s+ORFs\s+ORF/s", frame, re.M), frame
    assert re.search(r"^tls://127\.0\.0\.1:\d+\s", frame, re.M), frame
    # at the end: every stage ticked off, the worker's throughput, then the summary
    for label in (
        "loading models",
        "reading + translating",
        "embedding DNABERT-S",
        "embedding ESM-2",
        "classifying",
        "writing results",
    ):
        assert f"✓ {label}" in final, final
    assert re.search(r"^tls://\S+\s+.*\s19\s+290\s+[\d.]+", final, re.M), final
    assert re.search(r"^status\s+complete$", final, re.M), final


def test_worker_records_reach_the_client():
    received: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            received.append(record)

    handler = Collect()
    client_logger = logging.getLogger("virnuc_dask")
    old_level = client_logger.level
    client_logger.addHandler(handler)
    client_logger.setLevel(logging.INFO)
    try:
        with (
            dask.config.set(WORKER_ENV),
            LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            forward_worker_logs(client, "normal")
            worker_logger = logging.getLogger("virnuc_dask.on_worker")
            client.submit(worker_logger.info, "info from a worker", pure=False).result()
            client.submit(worker_logger.warning, "warning from a worker", pure=False).result()

            def arrived(text: str) -> Callable[[], bool]:
                return lambda: any(text in r.getMessage() for r in received)

            wait_until(arrived("warning from"), 10, interval=0.05, what="the worker's warning")
            forward_worker_logs(client, "verbose")
            client.submit(worker_logger.info, "detail from a worker", pure=False).result()
            wait_until(arrived("detail from"), 10, interval=0.05, what="the worker's detail")
            address = next(iter(client.scheduler_info()["workers"]))
    finally:
        client_logger.removeHandler(handler)
        client_logger.setLevel(old_level)
    messages = {r.getMessage(): r for r in received}
    assert "warning from a worker" in messages
    assert "info from a worker" not in messages  # normal: workers send warnings only
    assert "detail from a worker" in messages  # verbose: also info
    assert messages["warning from a worker"].worker == address
    assert messages["warning from a worker"].name == "virnuc_dask.on_worker"


# -- GPU figures per worker ---------------------------------------------------------------------

NVML_WORKER = {  # a worker's entry in scheduler_info() where distributed samples NVML
    "metrics": {"gpu": {"utilization": 87, "memory-used": 12_100_000_000}},
    "gpu": {"name": "NVIDIA A100-SXM4-80GB", "memory-total": 80_000_000_000},
}
CPU_WORKER = {"metrics": {"cpu": 95.0}}


def test_gpu_figures_from_distributed_nvml_metrics_or_no_gpu():
    from virnuc_dask.dataflow.dashboard import gpu_metrics

    figures = gpu_metrics(NVML_WORKER, {"reserved": 9_000_000_000, "peak": 11_000_000_000})
    assert figures == {
        "utilization": 87,
        "memory_used": 12_100_000_000,
        "name": "NVIDIA A100-SXM4-80GB",
        "memory_total": 80_000_000_000,
        "process_memory": 9_000_000_000,
        "process_memory_peak": 11_000_000_000,
    }
    assert gpu_metrics(CPU_WORKER) == "no GPU"
    assert gpu_metrics({}) == "no GPU"


def test_worker_rows_show_gpu_utilisation_and_memory_or_no_gpu():
    from rich.console import Console

    from virnuc_dask.cli.progress_view import worker_table
    from virnuc_dask.dataflow.dashboard import gpu_metrics

    state = RunProgress(clock=lambda: 5.0)
    gpus = {"tcp://gpu:1": gpu_metrics(NVML_WORKER), "tcp://cpu:2": gpu_metrics(CPU_WORKER)}
    state.record_gpus(gpus)  # 12.1 GB in use
    gpus["tcp://gpu:1"] = {**gpus["tcp://gpu:1"], "memory_used": 9e9}  # later, 9 GB
    state.record_gpus(gpus)
    console = Console(width=200, record=True)
    console.print(worker_table(state, {"tcp://gpu:1": "embed ×1", "tcp://cpu:2": "idle"}, gpus))
    text = console.export_text()
    gpu_row = next(line for line in text.splitlines() if "tcp://gpu:1" in line)
    cpu_row = next(line for line in text.splitlines() if "tcp://cpu:2" in line)
    assert "87% · 9.0/80 GB (peak 12.1)" in gpu_row
    assert cpu_row.rstrip().endswith("no GPU")
    line = status_line(state, {"tcp://gpu:1": "embed ×1", "tcp://cpu:2": "idle"}, gpus)
    assert "[87% · 9.0/80 GB (peak 12.1)]" in line and "[no GPU]" in line


def test_live_display_polls_the_workers_gpu_figures(client):
    """On this machine every worker reports no GPU."""
    with TerminalProgress(enabled=False, interval=3600, client=client) as progress:
        activity = progress.activity()
    assert activity and set(progress._gpus.values()) == {"no GPU"}
    assert "[no GPU]" in progress.line()


def test_jobs_without_workers_replace_the_time_left_and_lost_workers_show_as_gone():
    state = RunProgress(clock=lambda: 100.0)
    state.record(ProgressEvent("embed", 0, 4, orfs_total=400, orfs_reused=0))
    state.record(
        ProgressEvent("embed", 1, 4, partitions=(partition("tcp://w1", 100, 900, 1.0, 1500, 2.0),))
    )
    state.clock = lambda: 110.0
    line = status_line(state, {})
    assert "ETA" in line and "tcp://w1 1 partitions 100 ORFs 33.3 ORF/s (gone)" in line
    pending = ["no worker connected 0:05", "job 12 pending (Resources) 0:05"]
    line = status_line(state, {}, cluster=pending)
    assert "ETA" not in line
    assert line.endswith("| cluster: no worker connected 0:05; job 12 pending (Resources) 0:05")
    console = Console(record=True, width=160)
    progress = TerminalProgress(
        enabled=False, interval=60, console=console, cluster_status=lambda: pending
    )
    progress.state = state
    console.print(progress)
    text = console.export_text()
    assert "job 12 pending (Resources) 0:05" in text
    assert "gone" in text
