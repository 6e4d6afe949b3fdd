"""Shared machines: another user cannot reach a run, and two runs never share a directory.

The runs are ``virnuc-dask predict`` processes as a user starts them. The other user is
a real Unix account, made for the test (only as root) and removed after it; it tries
every port the run's processes listen on with a plain Dask client and with Dask's
lower-level RPC, over ``tcp://`` and over ``tls://`` without the run's credentials.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from helpers import REFERENCE, assert_matches_reference, predict_command

from virnuc_dask.runlock import LOCK_NAME

BASIC = REFERENCE / "dev" / "basic"
# Small partitions: the run lasts long enough to be probed and contended while it runs.
SLOW = ("--partition-rows", "8")

# Started as root (the interpreter lives where only root may read), it imports what it
# needs and makes its own credentials, then becomes the other user for good (uid, gid,
# no supplementary groups) before trying every way in; each attempt's outcome is
# printed as JSON.
PROBE = r"""
import asyncio, concurrent.futures, json, os, ssl, sys
from distributed import Client
from distributed.core import rpc
from distributed.protocol.pickle import dumps
from distributed.security import Security

own = Security.temporary()  # a client certificate, just not the run's


def unverified():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def raw(address, args):
    # What a worker or nanny runs for its "run" handler, and the scheduler's broadcast.
    async with rpc(address, connection_args=args, timeout=5) as r:
        try:
            return await r.run(function=dumps(os.getuid))
        except Exception:
            return await r.broadcast(msg={"op": "run", "function": dumps(os.getuid)})


def client_run(address, scheme):
    with Client(address, timeout=5, security=own if scheme == "tls" else None) as client:
        return client.run(os.getuid)


def attempts(address, scheme):
    return {
        "client": lambda: client_run(address, scheme),
        "rpc": lambda: asyncio.run(
            raw(address, {"ssl_context": unverified()} if scheme == "tls" else {})
        ),
    }


def try_all(targets):
    results = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=64)
    for host, port in targets:
        for scheme in ("tcp", "tls"):
            address = f"{scheme}://{host}:{port}"
            for name, attempt in attempts(address, scheme).items():
                try:  # a peer that never answers counts as refused
                    value = pool.submit(attempt).result(timeout=20)
                    results.append([address, name, "ran", repr(value)])
                except BaseException as exc:
                    results.append([address, name, "refused", type(exc).__name__])
    return results


try_all([["127.0.0.1", 1]])  # every code path once, while the modules can be read
uid, gid = int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
assert (os.getuid(), os.geteuid(), os.getgid(), os.getgroups()) == (uid, uid, gid, [])
print(json.dumps(try_all(json.loads(sys.argv[1]))), flush=True)
os._exit(0)  # attempts that never returned leave threads behind
"""


@pytest.fixture
def other_user():
    """A real second Unix user (no home, no login shell), removed after the test."""
    if os.geteuid() != 0:
        pytest.skip("creating a second Unix user to probe the run needs root")
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed")
    name = f"vnprobe{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


def probe_as(user: pwd.struct_passwd, ports: list[tuple[str, int]]) -> list[list[str]]:
    """Every way in to ``ports``, tried by ``user``; what each attempt gave."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(ports), str(user.pw_uid), str(user.pw_gid)],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def listening(roots: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the processes ``roots`` and their children
    listen on."""
    pids = set()
    for pid in roots:
        try:
            parent = psutil.Process(pid)
            pids |= {parent.pid, *(p.pid for p in parent.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    return sorted(
        {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections("inet")
            if c.pid in pids and c.status == psutil.CONN_LISTEN
        }
    )


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


def assert_refused(results: list[list[str]], ports: list[tuple[str, int]]) -> None:
    assert len(results) == 2 * 2 * len(ports)  # tcp and tls; client and rpc
    ran = [r for r in results if r[2] != "refused"]
    assert not ran, f"code ran as the run's user: {ran}"


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
        started = time.monotonic()
        second = subprocess.run(
            [*predict_command(BASIC / "input.fa"), *SLOW, "--out", str(out), "--overwrite"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - started
        assert first.poll() is None, f"the first run ended before the second ({took:.0f} s)"
    finally:
        text = finish(first, log)
    assert second.returncode == 1, second.stderr
    assert took < 30, took  # the time to start the command, nothing more
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
