"""The TLS credentials of a run: every cluster virnuc-dask starts speaks only TLS, with a
key and certificate made for that run alone (Dask's ``Security``), so that no one
without them (another user of the node, a host on the cluster network) can connect to
its scheduler, nannies or workers, let alone run code there.

- Local clusters: :func:`in_memory` — ``Security.temporary()``, never written to disk;
  the worker processes get it from their nanny.
- Batch jobs (``--cluster slurm|pbs``) and the ranks of ``--cluster slurm-runner`` need
  the credentials on the shared file system: :func:`write` puts them into a directory
  of mode 0700 (files 0600) inside the output directory, and :func:`remove` deletes it
  when the run ends.

The certificate is self-signed and is its own certificate authority: a peer is
accepted only if it presents this very certificate, and each side checks the other's
(mutual TLS).

Usage::

    security = credentials.in_memory()
    LocalCluster(security=security, ...); Client(cluster, security=security)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from distributed.security import Security

from virnuc_dask.errors import ClusterError

CERT = "cert.pem"
KEY = "key.pem"
PREFIX = ".tls-"


def in_memory() -> Security:
    """Fresh credentials of one run, in memory (TLS required)."""
    return Security.temporary()


def from_files(directory: str | os.PathLike[str]) -> Security:
    """The credentials :func:`write` left in ``directory``, for every role."""
    cert, key = (str(Path(directory) / name) for name in (CERT, KEY))
    return Security(
        require_encryption=True,
        tls_ca_file=cert,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write(parent: str | os.PathLike[str], name: str | None = None) -> tuple[Path, Security]:
    """Write fresh credentials into a new directory of mode 0700 under ``parent``.

    ``name``: the directory's name (other processes wait for it with :func:`wait`); it
    appears complete or not at all (written aside, then renamed). Without ``name`` a
    unique ``.tls-*`` directory is made. Returns the directory and the credentials
    read from its files.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    fresh = Security.temporary()
    staging = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))  # mode 0700
    try:
        os.chmod(staging, 0o700)
        _write_private(staging / CERT, fresh.tls_ca_file)
        _write_private(staging / KEY, fresh.tls_scheduler_key)
        if name is None:
            return staging, from_files(staging)
        target = parent / name
        remove(target)  # a leftover of an earlier attempt with the same name
        os.rename(staging, target)
    except BaseException:
        remove(staging)
        raise
    return target, from_files(target)


def wait(directory: str | os.PathLike[str], *, timeout: float, writer: str) -> Security:
    """The credentials another process writes into ``directory`` (at most ``timeout`` s)."""
    directory = Path(directory)
    deadline = time.monotonic() + timeout
    while not (directory / KEY).is_file():
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{writer} did not write the run's TLS credentials into {directory} within "
                f"{timeout:.0f} s; see its messages (it may have failed), and check that "
                "every node sees the output directory"
            )
        time.sleep(0.2)
    return from_files(directory)


def remove(directory: str | os.PathLike[str]) -> None:
    """Delete a credentials directory (nothing if it does not exist)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(directory)
