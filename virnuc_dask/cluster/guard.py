"""Nothing waits forever: a watch over a run's workers and its batch jobs.

A :class:`Guard` polls the scheduler (and, for ``--cluster slurm|pbs``, the batch
system) in a thread of the client process. It

- keeps the requested number of batch jobs alive: a job that ends after its workers
  connected (walltime, preemption, ``scancel``) is replaced by a new one, up to a
  limit of replacements;
- ends the run with a message that names the job, its state and the last lines of
  its log when a submission fails, when a job ends before any of its workers
  connected, when a pending job waited longer than ``start_timeout``, when a running
  job's worker never connects, and when no worker was connected for
  ``no_worker_timeout`` seconds.

It ends a run by cancelling the client's futures: whatever the client waits on
returns at once, and :attr:`Guard.failure` holds the reason.

Usage::

    with Guard(client, no_worker_timeout=300) as guard:
        guard.wait_for_workers(1)
        run(client)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed import Client

from virnuc_dask.cluster.jobs import GONE, JobInfo, log_tail, query
from virnuc_dask.errors import ClusterError
from virnuc_dask.formatting import clock

logger = logging.getLogger(__name__)

POLL_S = 2.0
WAIT_LOG_S = 30.0
SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub"}


@dataclasses.dataclass
class JobRecord:
    """One batch job of the run, as the guard follows it (times: the guard's clock)."""

    name: str
    job_id: str | None
    seen: float
    info: JobInfo | None = None
    state_since: float = 0.0
    running_since: float | None = None
    connected: bool = False
    done: bool = False  # ended and dealt with

    def describe(self, now: float) -> str:
        if self.info is None:
            return f"job {self.job_id} submitted {clock(now - self.seen)}"
        text = self.info.describe(now - self.state_since)
        if self.info.state == "RUNNING" and not self.connected:
            text += ", worker not connected yet"
        return text


class Guard:
    """Watch ``client``'s workers, and the jobs of a dask-jobqueue ``cluster``.

    ``jobs``: batch jobs to keep alive; ``replacements``: at most this many jobs are
    submitted to replace jobs that ended; ``start_timeout``: seconds jobs may pend
    while no worker is connected (None: no limit); ``no_worker_timeout``: seconds
    without any worker (a running job's worker that does not connect, workers of a
    scheduler started elsewhere) before the run ends.
    """

    def __init__(
        self,
        client: Client,
        *,
        cluster: Any = None,
        system: str | None = None,
        jobs: int = 0,
        replacements: int = 0,
        start_timeout: float | None = None,
        no_worker_timeout: float = 300.0,
        poll: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.system = system
        self.jobs = jobs
        self.replacements = replacements
        self.replaced = 0
        self.start_timeout = start_timeout
        self.no_worker_timeout = no_worker_timeout
        self.poll = poll
        self.clock = clock
        self.records: dict[str, JobRecord] = {}
        self.workers: set[str] = set()
        self.failure: ClusterError | None = None
        self.started = clock()
        self.last_worker = self.started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Guard:
        self._thread = threading.Thread(target=self._watch, name="virnuc-guard", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            # Interrupted (SIGTERM, Ctrl-C): the scheduler may be gone, and a poll of it
            # waits for connection timeouts; the thread is a daemon, let it go.
            interrupted = exc_type is not None and not issubclass(exc_type, Exception)
            self._thread.join(timeout=0.5 if interrupted else 2 * self.poll + 30)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            if self.failure is None:
                try:
                    self.check()
                except ClusterError as exc:
                    logger.debug("stopping the run: %s", exc)
                    self.failure = exc
                except (OSError, RuntimeError, TimeoutError) as exc:
                    # The scheduler is busy or closing; ask again next time.
                    logger.debug("could not check the workers: %s", exc)
            if self.failure is not None:
                self._cancel_everything()

    def _cancel_everything(self) -> None:
        # Only the client's own view of its futures: whatever the run waits on returns
        # with a cancellation at once. (Asking the scheduler to cancel them can trip over
        # tasks no client holds; the scheduler forgets them when the client closes.)
        self.client.loop.add_callback(self._cancel_futures)

    def _cancel_futures(self) -> None:
        for state in list(self.client.futures.values()):
            if state.status == "pending":
                state.cancel(reason="the cluster cannot run them", msg=str(self.failure))

    # -- for the client ------------------------------------------------------------------

    def wait_for_workers(self, n: int = 1) -> None:
        """Block until ``n`` workers are connected; raise the guard's failure if it ends."""
        logged = self.clock()
        while True:
            if self.failure is not None:
                raise self.failure
            with self._lock:
                if len(self.workers) >= n:
                    return
            now = self.clock()
            if now - logged >= WAIT_LOG_S:
                logged = now
                logger.info(
                    "waiting for %d worker(s): %s",
                    n,
                    "; ".join(self.status_lines()) or "none connected yet",
                )
            time.sleep(0.2)

    def status_lines(self) -> list[str]:
        """Jobs that have no connected worker (pending, starting), for the progress display;
        ``no worker connected m:ss`` when there is none at all."""
        now = self.clock()
        with self._lock:
            lines = [
                r.describe(now)
                for r in self.records.values()
                if not r.done and not r.connected and r.job_id is not None
            ]
            if not self.workers:
                lines.insert(0, f"no worker connected {clock(now - self.last_worker)}")
            if self.replaced:
                lines.append(f"{self.replaced} job(s) replaced")
        return lines

    # -- one poll ------------------------------------------------------------------------

    def check(self) -> None:
        """Look at workers and jobs once; raise ClusterError when the run cannot go on."""
        info = self.client.scheduler_info(n_workers=-1)
        names = {str(w.get("name")) for w in info.get("workers", {}).values()}
        now = self.clock()
        with self._lock:
            self.workers = names
            if names:
                self.last_worker = now
        if self.cluster is not None:
            self._check_jobs(now, names)
        if not names:
            self._check_without_workers(now, info.get("address", "the scheduler"))

    def _check_jobs(self, now: float, workers: set[str]) -> None:
        submit = SUBMIT_COMMANDS.get(self.system or "", "the submit command")
        for name, (job_id, error) in self.cluster.sync(self._snapshot).items():
            if error:
                raise ClusterError(
                    f"{submit} rejected the job: {error}; see the job script with "
                    f"`virnuc-dask job-script {self.system}` and the same --worker-type, "
                    "--job-* and --cluster-config options"
                )
            # By job id: the cluster names a replacement like the job it replaces.
            if job_id and job_id not in self.records:
                with self._lock:
                    self.records[job_id] = JobRecord(name, job_id, seen=now, state_since=now)
                logger.info("job %s submitted", job_id)
        live = [r for r in self.records.values() if not r.done and r.job_id]
        states = query(self.system or "slurm", [r.job_id for r in live])
        group = self.cluster.new_spec.get("group", [""]) if self.cluster.new_spec else [""]
        for record in live:
            own = {record.name + g for g in group}
            with self._lock:
                if own & workers:
                    record.connected = True
                job = states.get(record.job_id)
                changed = job is not None and (
                    record.info is None or job.state != record.info.state
                )
                if changed:
                    record.state_since = now
                    if job.state == "RUNNING" and record.running_since is None:
                        record.running_since = now
                if job is not None:
                    record.info = job
            if changed and not record.connected and not job.ended:
                logger.info("%s", record.describe(now))
            if job is not None and job.ended and not own & workers:
                self._job_ended(record, have_workers=bool(workers))

    def _job_ended(self, record: JobRecord, *, have_workers: bool) -> None:
        with self._lock:
            record.done = True
        state = record.info.state if record.info else GONE
        what = f"job {record.job_id} ended ({state.lower()})"
        if not record.connected:
            what += " before its worker connected to the scheduler"
        if not record.connected and not have_workers:
            raise ClusterError(f"{what}; {log_tail(self.system or 'slurm', record.job_id)}")
        if self.replaced < self.replacements:
            self.replaced += 1
            logger.warning(
                "%s; submitting a replacement job (%d of at most %d)",
                what,
                self.replaced,
                self.replacements,
            )
            self.cluster.sync(self._replace, record.name)
            return
        alive = [r for r in self.records.values() if not r.done]
        if not have_workers and not alive:
            raise ClusterError(
                f"{what}, no worker is left and {self.replacements} replacement job(s) "
                "were submitted already (--job-replacements); finished partitions are "
                "kept: re-run the same command to resume"
            )
        logger.warning(
            "%s; %d replacement job(s) submitted already (--job-replacements): "
            "going on with the other jobs",
            what,
            self.replaced,
        )

    def _check_without_workers(self, now: float, address: str) -> None:
        waited = now - self.last_worker
        if self.cluster is None:
            if waited > self.no_worker_timeout:
                raise ClusterError(
                    f"no worker connected to the scheduler at {address} for "
                    f"{clock(waited)} (--no-worker-timeout {self.no_worker_timeout:g}); "
                    "start workers for it (dask worker ADDRESS --resources GPU=1), or "
                    "check why they stopped"
                )
            return
        alive = [r for r in self.records.values() if not r.done and r.job_id]
        for record in alive:
            if (
                record.running_since is not None
                and not record.connected
                and now - record.running_since > self.no_worker_timeout
            ):
                tail = log_tail(self.system or "slurm", record.job_id)
                raise ClusterError(
                    f"job {record.job_id} has been running for "
                    f"{clock(now - record.running_since)} but its worker did not connect "
                    f"to the scheduler at {address} (--no-worker-timeout "
                    f"{self.no_worker_timeout:g}): can the nodes reach this host (set "
                    f"interface in --cluster-config)?; {tail}"
                )
        pending = [r for r in alive if r.info is not None and r.info.pending]
        if (
            self.start_timeout is not None
            and pending
            and len(pending) == len(alive)
            and waited > self.start_timeout
        ):
            raise ClusterError(
                f"no job started within --start-timeout {self.start_timeout:g} s: "
                f"{'; '.join(r.describe(now) for r in pending)}; the jobs are cancelled. "
                "Ask for what the cluster can give sooner (--job-cores, --job-memory, "
                "walltime or queue in --cluster-config), or wait longer"
            )

    # -- on the cluster's event loop -----------------------------------------------------

    async def _snapshot(self) -> dict[str, tuple[str | None, str | None]]:
        return {
            name: (getattr(job, "job_id", None), getattr(job, "submit_error", None))
            for name, job in self.cluster.workers.items()
        }

    async def _replace(self, name: str) -> None:
        job = self.cluster.workers.pop(name, None)
        self.cluster.worker_spec.pop(name, None)
        if job is not None:
            await job.close()  # nothing left to cancel, usually
        self.cluster.scale(jobs=self.jobs)
