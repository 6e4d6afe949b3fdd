"""Runs on clusters started elsewhere: a scheduler and two workers as separate processes.

The processes are started the way a user starts them by hand (`dask scheduler`,
`dask worker`), in another working directory than the client, with the nanny
environment line the README gives; `virnuc-dask predict` then connects by address
or scheduler file and must reproduce the original's outputs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster
from helpers import (
    BIN,
    REFERENCE,
    TINY,
    assert_matches_reference,
    hand_started_cluster,
    predict_command,
    wait_until,
    write_perf_reads,
)

from virnuc_dask.cluster.start import open_client
from virnuc_dask.cluster.workers import WORKER_ENV, WORKER_ENV_VALUE, WORKER_ENV_VARIABLE
from virnuc_dask.config import ConfigError, load_settings
from virnuc_dask.dataflow.pipeline import predict

STAGES = ("read_orfs", "dedup", "partition", "embed", "store-embeddings", "write-results")


@pytest.fixture(scope="module")
def hand_started(tmp_path_factory):
    """`dask scheduler` + two `dask worker` processes; yields (client, scheduler file)."""
    base = tmp_path_factory.mktemp("hand-started")
    with hand_started_cluster(base, {"w1": {}, "w2": {}}, nthreads=2) as (client, scheduler_file):
        yield client, scheduler_file


def _predict_cli(reference, cwd: Path, case: str, length: int, *extra: str):
    return subprocess.run(
        [
            *predict_command(reference / "dev" / case / "input.fa", length=length),
            "--partition-rows",
            "37",
            "--blocksize",
            "4096",
            *extra,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _embedded_orfs(client: Client) -> float:
    return sum(
        w["metrics"].get("embedded_orfs", 0)
        for w in client.scheduler_info(n_workers=-1)["workers"].values()
    )


def test_workers_started_by_hand_run_without_malloc_trim(hand_started):
    client, _ = hand_started
    values = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert len(values) == 2
    assert set(values.values()) == {None}


def test_predict_on_scheduler_address_matches_original(hand_started, reference, tmp_path):
    client, _ = hand_started
    before = _embedded_orfs(client)
    address = client.scheduler.address
    # Relative paths from the client's directory: the workers run elsewhere.
    proc = _predict_cli(
        reference,
        tmp_path,
        "basic",
        300,
        "--scheduler",
        address,
        "--out",
        "out",
        "--performance-report",
        "report.html",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "dashboard: http://" in proc.stderr
    assert_matches_reference(tmp_path / "out", reference / "dev" / "basic" / "L300")

    report = (tmp_path / "report.html").read_text()
    assert "Dask Performance Report" in report

    # Stages are readable task prefixes on the scheduler (task stream, progress).
    prefixes = set(
        client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    )
    assert set(STAGES) <= prefixes
    assert not {"_take", "_gather", "_first", "_write_block"} & prefixes

    # Each worker's embedding throughput reaches the scheduler with the heartbeats.
    wait_until(lambda: _embedded_orfs(client) - before >= 250, 30, interval=0.5)
    assert _embedded_orfs(client) - before == 250  # ORFs of basic at 300 bp
    for worker in client.scheduler_info(n_workers=-1)["workers"].values():
        assert {"embedded_orfs", "embedded_tokens", "embed_seconds", "embed_orfs_per_s"} <= set(
            worker["metrics"]
        )
    # ... and the Fine Performance Metrics page splits embedding time and work by model.
    fine = client.run_on_scheduler(
        lambda dask_scheduler: [
            k
            for k in dask_scheduler.cumulative_worker_metrics
            if isinstance(k, tuple) and k[:2] == ("execute", "embed")
        ]
    )
    assert {
        ("execute", "embed", model, unit)
        for model in ("dnabert", "esm")
        for unit in ("seconds", "tokens")
    } <= set(fine)
    assert ("execute", "embed", "embedded", "orfs") in fine


def test_predict_with_scheduler_file_matches_original(hand_started, reference, tmp_path):
    _, scheduler_file = hand_started
    proc = _predict_cli(
        reference,
        tmp_path,
        "messy",
        500,
        "--scheduler-file",
        str(scheduler_file),
        "--out",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    assert_matches_reference(tmp_path / "out", reference / "dev" / "messy" / "L500")


def test_workers_without_gpu_resource_still_embed(reference, tmp_path):
    settings = load_settings(
        inputs=[str(reference / "dev" / "mixed" / "input.fa")],
        overrides={
            "out": str(tmp_path),
            "length": 500,
            "precision": "fp32",
            "partition_rows": 64,
            **TINY,
        },
    )
    with (
        dask.config.set(WORKER_ENV),
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        result = predict(settings, client)
    assert result.exit_code == 0
    assert_matches_reference(tmp_path, reference / "dev" / "mixed" / "L500")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"cluster": "slurm", "scheduler": "tcp://h:8786"}, "cannot be combined"),
        ({"scheduler": "tcp://h:8786", "scheduler_file": "s.json"}, "choose one"),
        ({"jobs": 2}, "jobs applies to cluster slurm or pbs"),
        ({"cluster": "sge"}, "cluster must be one of local, slurm, pbs, slurm-runner"),
    ],
)
def test_cluster_settings_that_contradict_each_other(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides)


def test_scheduler_that_is_neither_address_nor_file(tmp_path):
    settings = load_settings(
        overrides={"scheduler": str(tmp_path / "missing.json"), "out": str(tmp_path)}
    )
    with (
        pytest.raises(ConfigError, match="neither an address .* nor an existing scheduler file"),
        open_client(settings),
    ):
        pass


def test_absolute_paths_keep_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reads.fa").write_text(">r\nACGT\n")
    settings = load_settings(
        inputs=["reads.fa"],
        overrides={"out": "out", "classifier": "m.pth", "model_cache": "~/models"},
    ).with_absolute_paths()
    assert settings.inputs == (str(tmp_path / "reads.fa"),)
    assert settings.out == str(tmp_path / "out")
    assert settings.classifier == str(tmp_path / "m.pth")
    assert settings.model_cache == os.path.expanduser("~/models")
    assert settings.esm_model == "esm2_t36_3B_UR50D"
    assert settings.dnabert_model == "zhihan1996/DNABERT-S"


def test_slurm_runner_ranks_of_one_job_match_original(reference, tmp_path):
    """What cluster/slurm-batch.sh starts: the same command as ranks 0, 1, 2 of a job."""
    procs = []
    for rank in range(3):
        env = {
            **os.environ,
            "SLURM_PROCID": str(rank),
            "SLURM_NTASKS": "3",
            "SLURM_JOB_ID": "4242",
            "CUDA_VISIBLE_DEVICES": "",
        }
        procs.append(
            subprocess.Popen(
                [
                    *predict_command(reference / "dev" / "boundaries" / "input.fa", length=500),
                    "--partition-rows",
                    "37",
                    "--out",
                    "out",
                    "--cluster",
                    "slurm-runner",
                    "--worker-type",
                    "cpu",
                ],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        logs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0, 0], logs
    assert "dashboard: http://" in logs[1]  # the client rank
    assert_matches_reference(tmp_path / "out", reference / "dev" / "boundaries" / "L500")
    assert not list((tmp_path / "out").glob(".scheduler-*.json"))


def test_scheduler_without_workers_ends_the_run(tmp_path):
    with LocalCluster(n_workers=0, dashboard_address=":0") as cluster:
        started = time.monotonic()
        proc = _predict_cli(
            REFERENCE,
            tmp_path,
            "basic",
            300,
            "--scheduler",
            cluster.scheduler_address,
            "--out",
            "out",
            "--no-worker-timeout",
            "3",
        )
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 60
    assert (
        f"no worker connected to the scheduler at {cluster.scheduler_address} for 0:0"
        in proc.stderr
    )
    assert "(--no-worker-timeout 3)" in proc.stderr and "Traceback" not in proc.stderr


def test_workers_lost_mid_run_end_it_and_keep_finished_partitions(tmp_path):
    reads = write_perf_reads(tmp_path / "reads.fa", 500, seed=5, prefix="lost")
    log = tmp_path / "run.log"
    with LocalCluster(n_workers=0, dashboard_address=":0") as cluster:
        env = {**os.environ, WORKER_ENV_VARIABLE: WORKER_ENV_VALUE}
        worker = subprocess.Popen(
            [
                str(BIN / "dask"),
                "worker",
                cluster.scheduler_address,
                "--nthreads",
                "2",
                "--resources",
                "GPU=1",
                "--dashboard-address",
                ":0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            with open(log, "w") as fh:
                proc = subprocess.Popen(
                    [
                        *predict_command(reads),
                        "--partition-rows",
                        "40",
                        "--out",
                        "out",
                        "--scheduler",
                        cluster.scheduler_address,
                        "--no-worker-timeout",
                        "4",
                        "--progress-interval",
                        "0.5",
                    ],
                    cwd=tmp_path,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )

            def partition_done() -> bool:
                assert proc.poll() is None, log.read_text()
                return bool(re.search(r"· [1-9]\d*/\d+ partitions", log.read_text()))

            wait_until(partition_done, 120, interval=0.2, what="a finished partition")
            os.killpg(worker.pid, signal.SIGKILL)
            lost = time.monotonic()
            proc.wait(timeout=60)
        finally:
            for p in (worker, proc):
                if p.poll() is None:
                    p.kill()
    text = log.read_text()
    assert proc.returncode == 1, text
    assert time.monotonic() - lost < 60
    assert "no worker connected to the scheduler at" in text
    assert "(gone)" in text
    assert "Traceback" not in text
    assert list((tmp_path / "out" / "partitions").iterdir())
