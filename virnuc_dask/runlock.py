"""One run per output directory: a lock file that names its holder, with a heartbeat.

A run holds ``DIR/.virnuc-dask.lock`` for its whole life. The file says who holds it
(host, pid, the process's start time, user, command line, when the run started) and
its modification time is the holder's heartbeat, renewed every ``HEARTBEAT_S``
seconds by a thread of the holding process.

It works on the shared file systems HPC sites use (NFS, Lustre), without ``flock``:
the lock is created by ``link()``-ing a fully written private file to the lock's name,
which succeeds for exactly one process on every POSIX file system, NFS included
(``O_CREAT | O_EXCL`` where hard links are not supported). A lock whose holder is
gone is taken over, saying so:

- holder on this host: gone when its pid no longer runs, or runs another process
  (a different start time: the pid was reused);
- holder on another host: gone when its heartbeat is older than ``STALE_AFTER_S``,
  measured against the modification time of a file written just now in the same
  directory, so both times come from the same clock (the file server's on NFS).

Taking over goes through a second lock file (``.virnuc-dask.lock.takeover``), so two
runs that find the same dead holder cannot both remove it and each believe they hold
the directory.

Usage::

    with hold_directories(["results"]):
        ...  # the run; a second run into results/ stops with OutputDirError
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import getpass
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from virnuc_dask.errors import OutputDirError

logger = logging.getLogger(__name__)

LOCK_NAME = ".virnuc-dask.lock"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 90.0
# A takeover lock older than this belongs to a run that died while taking over.
TAKEOVER_STALE_S = 30.0
# How long a run waits while another run takes over a dead holder's lock.
TAKEOVER_WAIT_S = 10.0


def _now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


class RunLock:
    """The lock of one run directory; see the module docstring.

    ``on_lost`` is called (from the heartbeat thread) if the lock file stops being
    this run's: removed by hand, or taken over by another host after this process
    could not renew its heartbeat for ``stale_after`` seconds. The default stops the
    run as Ctrl-C would: two runs must not write one directory. ``within``: the directory
    of the run this one belongs to (a sample's folder in a sequencing run's directory),
    named to whoever finds the directory held.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        heartbeat: float = HEARTBEAT_S,
        stale_after: float = STALE_AFTER_S,
        on_lost: Callable[[], None] | None = None,
        within: str | os.PathLike[str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.within = None if within is None else str(within)
        self.path = self.directory / LOCK_NAME
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.on_lost = on_lost if on_lost is not None else _interrupt_main
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquiring -------------------------------------------------------------------------

    def acquire(self) -> None:
        """Hold the directory, or raise :class:`OutputDirError` naming the live holder."""
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while True:
            now = self._create()
            if now is None:
                break
            holder = self._read()
            if holder is None:  # removed in the meantime, or being written
                time.sleep(0.05)
                continue
            gone = self._gone(holder, now)
            if gone is None:
                raise OutputDirError(self._held_message(holder, now))
            if not self._take_over(holder, gone) and time.monotonic() > deadline:
                raise OutputDirError(
                    f"{self.directory}: another run is taking over the lock of a run that "
                    f"is gone ({self.path}.takeover exists); try again in a minute"
                )
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name="virnuc-dask-lock-heartbeat", daemon=True
        )
        self._thread.start()

    def _record(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": os.getpid(),
            "process_started": _process_started(os.getpid()),
            "user": _user(),
            "started": _now_text(),
            "command": shlex.join(sys.argv)[:500],
            "token": self.token,
            **({"within": self.within} if self.within else {}),
        }

    def _create(self) -> float | None:
        """Create the lock file; None when this run holds it now, else the current time
        as the directory's file system sees it (the mtime of a file written just now)."""
        tmp = self.directory / f"{LOCK_NAME}.{self.host}.{os.getpid()}.{self.token[:8]}"
        try:
            with open(tmp, "w") as fh:
                json.dump(self._record(), fh, indent=1)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                # On NFS a retransmitted link() can report EEXIST for a link it made.
                if os.stat(tmp).st_nlink == 2:
                    return None
                return os.stat(tmp).st_mtime
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
                    raise
                return self._create_exclusive(tmp)
            return None
        except OSError as exc:
            raise OutputDirError(
                f"{self.directory}: cannot create the run's lock file: {exc.strerror or exc}"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _create_exclusive(self, written: Path) -> float | None:
        """Where hard links are not supported: ``O_CREAT | O_EXCL``."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return os.stat(written).st_mtime
        with os.fdopen(fd, "w") as fh:
            fh.write(written.read_text())
            fh.flush()
            os.fsync(fh.fileno())
        return None

    def _read(self) -> dict[str, Any] | None:
        """The holder's record and heartbeat (``mtime``); None if there is no lock file."""
        try:
            text = self.path.read_text()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError(text)
        except ValueError:
            record = {"token": None}  # unreadable: judged by its heartbeat alone
        record["mtime"] = mtime
        return record

    def _gone(self, holder: dict[str, Any], now: float) -> str | None:
        """Why the holder is gone, or None while it may still run."""
        age = now - holder["mtime"]
        pid = holder.get("pid")
        if holder.get("host") == self.host and isinstance(pid, int):
            started = _process_started(pid)
            if started is None:
                return f"pid {pid} no longer runs on this host"
            recorded = holder.get("process_started")
            if isinstance(recorded, int | float) and abs(started - recorded) > 1:
                return f"pid {pid} on this host is now another process"
            return None
        if age > self.stale_after:
            return f"its last heartbeat is {age:.0f} s old (more than {self.stale_after:.0f} s)"
        return None

    def _take_over(self, holder: dict[str, Any], why: str) -> bool:
        """Remove a dead holder's lock (under the takeover lock); False when another run
        is taking it over right now."""
        guard = Path(f"{self.path}.takeover")
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                    guard.unlink()
            time.sleep(0.2)
            return False
        try:
            os.close(fd)
            current = self._read()
            # Still the lock judged dead (same holder, no heartbeat since)?
            if (
                current is not None
                and current.get("token") == holder.get("token")
                and current["mtime"] == holder["mtime"]
            ):
                self.path.unlink()
                logger.warning(
                    "%s: taking over the lock of a run that is gone (%s; %s); its "
                    "finished work is kept and resumed",
                    self.directory,
                    _describe(holder),
                    why,
                )
        finally:
            with contextlib.suppress(OSError):
                guard.unlink()
        return True

    def _held_message(self, holder: dict[str, Any], now: float) -> str:
        host = holder.get("host", "?")
        pid = holder.get("pid", "?")
        here = host == self.host
        return (
            f"{self.directory} is in use by another run ({_describe(holder)}, last "
            f"heartbeat {max(0.0, now - holder['mtime']):.0f} s ago): wait for it to end, stop "
            f"it ({'kill ' + str(pid) if here else f'on {host}: kill {pid}'}; a batch job: "
            f"scancel it), or pass another --out. Only if that run is known to be gone, "
            f"remove {self.path}"
        )

    # -- holding ---------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            current = self._read()
            if current is None or current.get("token") != self.token:
                logger.error(
                    "%s: this run's lock was %s; stopping, so that two runs never write "
                    "one directory (finished partitions are kept)",
                    self.directory,
                    "removed" if current is None else f"taken over by {_describe(current)}",
                )
                self.on_lost()
                return
            try:
                os.utime(self.path)
            except OSError as exc:  # a file server that does not answer for a while
                logger.warning("%s: cannot renew the run's heartbeat: %s", self.path, exc)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file, if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat + 5)
            self._thread = None
        current = self._read()
        if current is not None and current.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(holder: dict[str, Any]) -> str:
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("within"):
        parts.insert(0, f"the run into {holder['within']}")
    if holder.get("user"):
        parts.append(f"user {holder['user']}")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    if holder.get("command"):
        parts.append(f"command: {holder['command']}")
    return ", ".join(parts)


def _interrupt_main() -> None:
    import _thread

    _thread.interrupt_main()


@contextlib.contextmanager
def hold_directories(directories: Sequence[str | os.PathLike[str]]) -> Iterator[list[RunLock]]:
    """Hold each of ``directories`` (created if needed) until the block ends; a
    directory held by a live run raises :class:`OutputDirError` before anything else.
    A directory inside another of them is held as part of that one's run."""
    with contextlib.ExitStack() as stack:
        locks = []
        held = list(dict.fromkeys(os.path.abspath(d) for d in directories))
        for directory in held:
            within = next(
                (d for d in held if Path(directory).is_relative_to(d) and d != directory), None
            )
            locks.append(stack.enter_context(RunLock(directory, within=within)))
        yield locks
