"""The run directory's lock: real files, real processes, on this machine's file system."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from virnuc_dask.errors import OutputDirError
from virnuc_dask.runlock import LOCK_NAME, RunLock, hold_directories

HOLD = """
import sys, time
from virnuc_dask.runlock import RunLock
lock = RunLock(sys.argv[1])
try:
    lock.acquire()
except Exception as exc:
    print("refused:", exc, flush=True)
    sys.exit(1)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def _holder(directory: Path, seconds: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _write_foreign_lock(directory: Path, *, age: float, host: str = "node-elsewhere") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    path.write_text(json.dumps({"host": host, "pid": 4242, "started": "earlier", "token": "other"}))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path):
    with RunLock(tmp_path / "out") as lock:
        record = json.loads(lock.path.read_text())
        assert record["host"] == socket.gethostname()
        assert record["pid"] == os.getpid()
        assert record["started"] and record["process_started"] and record["command"]
    assert not lock.path.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no private file left behind


def test_a_second_holder_in_another_process_is_refused_naming_the_first(tmp_path):
    first = _holder(tmp_path)
    try:
        with pytest.raises(OutputDirError) as caught:
            RunLock(tmp_path).acquire()
    finally:
        first.kill()
        first.wait()
    message = str(caught.value)
    assert f"{tmp_path} is in use by another run" in message
    assert f"pid {first.pid} on host {socket.gethostname()}" in message
    assert f"kill {first.pid}" in message and "another --out" in message


def test_the_lock_of_a_killed_process_is_taken_over_saying_so(tmp_path, caplog):
    first = _holder(tmp_path)
    first.send_signal(signal.SIGKILL)
    first.wait()
    with caplog.at_level(logging.WARNING, logger="virnuc_dask.runlock"), RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a run that is gone (pid {first.pid}" in caplog.text
    assert f"pid {first.pid} no longer runs on this host" in caplog.text


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path, caplog):
    # This process's pid, but the lock says it started at another time: another process.
    (tmp_path / LOCK_NAME).write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process_started": 1.0,
                "token": "old",
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="virnuc_dask.runlock"), RunLock(tmp_path):
        pass
    assert "is now another process" in caplog.text


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path):
    _write_foreign_lock(tmp_path, age=5)
    with pytest.raises(
        OutputDirError, match=r"pid 4242 on host node-elsewhere.*on node-elsewhere: kill 4242"
    ):
        RunLock(tmp_path).acquire()


def test_another_hosts_lock_with_a_stale_heartbeat_is_taken_over(tmp_path, caplog):
    _write_foreign_lock(tmp_path, age=600)
    with caplog.at_level(logging.WARNING, logger="virnuc_dask.runlock"), RunLock(tmp_path):
        pass
    assert "host node-elsewhere" in caplog.text
    assert re.search(r"last heartbeat is \d+ s old \(more than 90 s\)", caplog.text)


def test_the_heartbeat_renews_the_lock_and_notices_losing_it(tmp_path):
    lost = threading.Event()
    lock = RunLock(tmp_path, heartbeat=0.1, on_lost=lost.set)
    lock.acquire()
    try:
        then = time.time() - 300
        os.utime(lock.path, (then, then))
        time.sleep(0.5)
        assert time.time() - lock.path.stat().st_mtime < 5
        # Another run took it (as another host would after a long silence).
        record = json.loads(lock.path.read_text())
        lock.path.write_text(json.dumps({**record, "token": "someone-else"}))
        assert lost.wait(5)
    finally:
        lock.release()
    assert lock.path.exists()  # not ours any more: left to its holder


def test_of_runs_racing_for_a_dead_runs_lock_exactly_one_wins(tmp_path):
    _write_foreign_lock(tmp_path, age=600)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD, str(tmp_path), "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert sum(out.startswith("held") for out in outputs) == 1, outputs
    assert sum("is in use by another run" in out for out in outputs) == 3, outputs


def test_holding_several_directories_releases_all_when_one_is_taken(tmp_path):
    first = _holder(tmp_path / "b")
    try:
        with (
            pytest.raises(OutputDirError, match="is in use"),
            hold_directories([tmp_path / "a", tmp_path / "b"]),
        ):
            pass
    finally:
        first.kill()
        first.wait()
    assert not (tmp_path / "a" / LOCK_NAME).exists()
