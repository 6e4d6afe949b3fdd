"""Shared machines: another user cannot reach a run, and two runs never share a directory.

The runs are ``virnuc-dask predict`` processes as a user starts them. The other user is
a real Unix account, made for the test (only as root) and removed after it; it tries
every port the run's processes listen on with a plain Dask client and with Dask's
lower-level RPC, over ``tcp://`` and over ``tls://`` without the run's credentials.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REFERENCE, assert_matches_reference, predict_command
from probe import assert_refused, listening, probe_as

from virnuc_dask.runlock import LOCK_NAME

BASIC = REFERENCE / "dev" / "basic"
# Small partitions: the run lasts long enough to be probed and contended while it runs.
SLOW = ("--partition-rows", "8")


def start_predict(out: Path, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(
            [*predict_command(BASIC / "input.fa"), *SLOW, "--out", str(out), *extra],
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def wait_for_text(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text()):
        if proc.poll() is not None:
            pytest.fail(
                f"the run exited with {proc.returncode} before {pattern!r}:\n{log.read_text()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} within {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return log.read_text()


def test_another_user_cannot_run_code_on_a_running_predict(other_user, tmp_path):
    log = tmp_path / "run.log"
    proc = start_predict(tmp_path / "out", log)
    try:
        wait_for_text(log, r"local cluster: 1 worker\(s\), TLS", proc)
        ports = listening([proc.pid])
        # scheduler, its dashboard, the nanny, the worker (and its HTTP endpoint)
        assert len(ports) >= 4, ports
        assert {ip for ip, _ in ports} == {"127.0.0.1"}, ports  # nothing on the network
        results = probe_as(other_user, ports)
    finally:
        text = finish(proc, log)
    assert_refused(results, ports)
    assert proc.returncode == 0, text
    assert "dashboard: http://localhost:" in text and "ssh -L" in text
    assert_matches_reference(tmp_path / "out", BASIC / "L300")


def test_a_second_predict_into_the_same_out_stops_at_once(tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "first.log"
    first = start_predict(out, log, "--partition-rows", "2")  # slower still
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        # The first run (and its workers) paused while the second starts: however slowly
        # the second starts on a loaded machine, the first still holds its lock (a paused
        # process is a running one), and the second must not wait for it.
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            second = subprocess.run(
                [*predict_command(BASIC / "input.fa"), *SLOW, "--out", str(out), "--overwrite"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            took = time.monotonic() - started
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert first.poll() is None, f"the first run ended before the second ({took:.0f} s)"
    finally:
        text = finish(first, log)
    assert second.returncode == 1, second.stderr
    assert took < 90, took  # the time to start the command, nothing more (it never waits)
    assert f"{out} is in use by another run (pid {first.pid} on host" in second.stderr
    assert "another --out" in second.stderr and "Traceback" not in second.stderr
    assert "local cluster" not in second.stderr  # it started nothing
    assert first.returncode == 0, text
    assert_matches_reference(out, BASIC / "L300")
    assert not (out / LOCK_NAME).exists()


def test_a_killed_runs_lock_does_not_block_the_next_run(tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "killed.log"
    first = start_predict(out, log, "--progress-interval", "0.5")
    try:
        wait_for_text(log, r"[1-9]\d*/\d+ partitions", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run and its workers, as the OOM killer might
        first.wait()
    assert (out / LOCK_NAME).exists()
    again = subprocess.run(
        [*predict_command(BASIC / "input.fa"), *SLOW, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert f"taking over the lock of a run that is gone (pid {first.pid}" in again.stderr
    assert re.search(r"\d+ ORFs in \d+ partitions, [1-9]\d* already done", again.stderr)
    assert_matches_reference(out, BASIC / "L300")


def test_a_tls_scheduler_the_user_started_is_reached_with_their_dask_config(tmp_path):
    """`dask scheduler` and `dask worker` started by hand with TLS: `--scheduler-file`
    works with the user's own Dask TLS settings, and says what is missing without."""
    from virnuc_dask.cluster import credentials

    tls, _ = credentials.write(tmp_path, "user-tls")
    cert, key = str(tls / "cert.pem"), str(tls / "key.pem")
    flags = ["--tls-ca-file", cert, "--tls-cert", cert, "--tls-key", key]
    scheduler_file = tmp_path / "scheduler.json"
    dask = str(Path(sys.executable).parent / "dask")
    procs = [
        subprocess.Popen(
            [
                dask,
                "scheduler",
                "--protocol",
                "tls",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(scheduler_file),
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        procs.append(
            subprocess.Popen(
                [
                    dask,
                    "worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nthreads",
                    "2",
                    "--resources",
                    "GPU=1",
                    "--dashboard-address",
                    ":0",
                    *flags,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        command = [
            *predict_command(BASIC / "input.fa"),
            "--scheduler-file",
            str(scheduler_file),
        ]
        without = subprocess.run(
            [*command, "--out", str(tmp_path / "refused")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        user_config = {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": cert,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": key,
        }
        with_config = subprocess.run(
            [*command, "--out", str(tmp_path / "out")],
            env={**os.environ, **user_config},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert without.returncode == 1, without.stderr
    assert "speaks TLS, and this process has no TLS credentials" in without.stderr
    assert "distributed.comm.tls.client.cert" in without.stderr
    assert "Traceback" not in without.stderr
    assert with_config.returncode == 0, with_config.stderr
    assert_matches_reference(tmp_path / "out", BASIC / "L300")
