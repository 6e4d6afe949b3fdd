"""What the batch system says about the jobs of a ``--cluster slurm|pbs`` run.

One query per poll for all jobs (``squeue`` / ``qstat``), the log of a job that
ended, and a dask-jobqueue job class that keeps the submit command's own error
message instead of raising it inside the event loop (where it would only be
logged, and the run would wait for a worker that never comes).

>>> JobInfo("123", "PENDING", "Resources").describe(250)
'job 123 pending (Resources) 4:10'
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
from collections import deque
from pathlib import Path

from distributed.core import Status

from virnuc_dask.formatting import clock

logger = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 30
LOG_LINES = 15

# SLURM job states after which no worker of the job will ever run.
SLURM_ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "SPECIAL_EXIT",
    "TIMEOUT",
}
SLURM_PENDING = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESV_DEL_HOLD",
    "SUSPENDED",
    "CONFIGURING",
}
# PBS job_state letters.
PBS_STATES = {
    "Q": "QUEUED",
    "H": "HELD",
    "W": "WAITING",
    "T": "TRANSIT",
    "R": "RUNNING",
    "E": "EXITING",
    "F": "FINISHED",
    "X": "FINISHED",
    "B": "RUNNING",
    "S": "SUSPENDED",
    "U": "SUSPENDED",
    "M": "MOVED",
    "C": "COMPLETED",
}
PBS_ENDED = {"FINISHED", "MOVED", "COMPLETED"}
PBS_PENDING = {"QUEUED", "HELD", "WAITING", "TRANSIT", "SUSPENDED"}
#: A job that is no longer known to the batch system (ended and purged).
GONE = "GONE"


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """One job's state as the batch system reports it (SLURM's state names)."""

    job_id: str
    state: str
    reason: str = ""

    @property
    def ended(self) -> bool:
        return self.state in SLURM_ENDED or self.state in PBS_ENDED or self.state == GONE

    @property
    def pending(self) -> bool:
        return self.state in SLURM_PENDING or self.state in PBS_PENDING

    def describe(self, seconds: float | None = None) -> str:
        """``job 123 pending (Resources) 4:10``: state, why, and for how long."""
        text = f"job {self.job_id} {self.state.lower()}"
        if self.reason and self.reason not in ("None", "(null)"):
            text += f" ({self.reason})"
        return text if seconds is None else f"{text} {clock(max(0.0, seconds))}"


def query(system: str, job_ids: list[str]) -> dict[str, JobInfo]:
    """States of ``job_ids``; a job the batch system no longer knows is ``GONE``.

    An empty result means the query itself failed (logged; the caller asks again).
    """
    if not job_ids:
        return {}
    try:
        found = _query_slurm(job_ids) if system == "slurm" else _query_pbs(job_ids)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("could not query the %s job states: %s", system, exc)
        return {}
    return {j: found.get(j, JobInfo(j, GONE)) for j in job_ids}


def _query_slurm(job_ids: list[str]) -> dict[str, JobInfo]:
    proc = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--jobs", ",".join(job_ids), "--format=%i|%T|%r"],
        capture_output=True,
        text=True,
        timeout=QUERY_TIMEOUT_S,
    )
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # every job of the list has been purged
            return {}
        raise subprocess.SubprocessError(proc.stderr.strip())
    out = {}
    for line in proc.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        # Array and het jobs are not submitted here; keep the plain id.
        out[job_id.strip()] = JobInfo(job_id.strip(), state.strip().split()[0], reason.strip())
    return out


def _query_pbs(job_ids: list[str]) -> dict[str, JobInfo]:
    proc = subprocess.run(
        ["qstat", "-x", "-f", *job_ids], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S
    )
    out = {}
    current = None
    for line in proc.stdout.splitlines():
        if line.startswith("Job Id:"):
            current = line.split(":", 1)[1].strip()
        elif current and line.strip().startswith("job_state ="):
            letter = line.split("=", 1)[1].strip()
            for job_id in job_ids:  # qstat prints the full name (123.server)
                if current == job_id or current.startswith(f"{job_id}."):
                    out[job_id] = JobInfo(job_id, PBS_STATES.get(letter, letter))
    if proc.returncode != 0 and not out and "Unknown Job Id" not in proc.stderr:
        raise subprocess.SubprocessError(proc.stderr.strip())
    return out


def log_files(system: str, job_id: str) -> list[Path]:
    """Where the job wrote its output and errors (as the batch system reports them)."""
    if system != "slurm":
        return []
    try:
        proc = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", job_id],
            capture_output=True,
            text=True,
            timeout=QUERY_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    paths = []
    for key in ("StdErr", "StdOut"):
        match = re.search(rf"\b{key}=(\S+)", proc.stdout)
        if match and Path(match.group(1)) not in paths:
            paths.append(Path(match.group(1)))
    return paths


def log_tail(system: str, job_id: str, lines: int = LOG_LINES) -> str:
    """The last ``lines`` lines of a job's log, with the file named; or where to look."""
    for path in log_files(system, job_id):
        try:
            with open(path, errors="replace") as fh:
                tail = [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
        except OSError:
            continue
        if tail:
            return f"last lines of {path}:\n" + "\n".join(f"  {line}" for line in tail)
    where = (
        "its log (slurm-%j.out in the submission directory, unless log-directory is set)"
        if system == "slurm"
        else "its output and error files"
    )
    return f"see {where.replace('%j', job_id)}"


def submit_error_text(exc: BaseException) -> str:
    """The batch system's own words from a failed dask-jobqueue submission."""
    text = str(exc)
    match = re.search(r"stderr:\n(.*)", text, re.S)
    if match and match.group(1).strip():
        return match.group(1).strip()
    match = re.search(r"stdout:\n(.*?)\nstderr:", text, re.S)
    if match and match.group(1).strip():
        return match.group(1).strip()
    return " ".join(text.split())


def watched_job_class(base: type) -> type:
    """``base`` (a dask-jobqueue Job class) that records a failed submission.

    The record (``submit_error``) is read by :class:`~virnuc_dask.cluster.guard.Guard`,
    which ends the run with the submit command's message; raising in the event loop
    would only print a traceback while the run waited on.
    """

    class WatchedJob(base):
        submit_error: str | None = None

        async def start(self) -> None:
            try:
                await super().start()
            except (RuntimeError, ValueError) as exc:
                self.submit_error = submit_error_text(exc)
                logger.debug("job submission failed: %s", exc)
                # Counted as started (without a job id), so that the cluster neither
                # fails its bookkeeping nor submits it again; the guard ends the run.
                self.status = Status.running

    WatchedJob.__name__ = WatchedJob.__qualname__ = base.__name__
    return WatchedJob
