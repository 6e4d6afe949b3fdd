"""Another Unix user of the machine tries every way into a run's processes.

:func:`other_user` makes a real second account (root only) and removes it after;
:func:`probe_as` tries, as that user, every port given with a plain Dask client and
with Dask's lower-level RPC, over ``tcp://`` and over ``tls://`` without the run's
credentials; :func:`listening` finds the ports a run's processes listen on.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psutil
import pytest

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


@contextlib.contextmanager
def other_user() -> Iterator[pwd.struct_passwd]:
    """A real second Unix user (no home, no login shell), removed afterwards."""
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


def assert_refused(results: list[list[str]], ports: list[tuple[str, int]]) -> None:
    assert len(results) == 2 * 2 * len(ports)  # tcp and tls; client and rpc
    ran = [r for r in results if r[2] != "refused"]
    assert not ran, f"code ran as the run's user: {ran}"
