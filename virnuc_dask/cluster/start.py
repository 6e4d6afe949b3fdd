"""Which Dask cluster a run uses, started and stopped in one place.

- ``scheduler`` / ``scheduler_file`` set: connect to a running scheduler;
- ``cluster: slurm | pbs``: dask-jobqueue batch jobs of dask-cuda workers, one per
  GPU, configured by ``jobqueue.yaml`` beside this module (merged into
  ``dask.config`` as defaults), Dask's own config and ``cluster_config``;
- ``cluster: slurm-runner``: every rank of one ``srun`` runs the same command and
  becomes the scheduler, the client or a worker (dask-jobqueue's ``SLURMRunner``);
- otherwise GPUs visible to NVML: ``dask_cuda.LocalCUDACluster``, one worker per GPU;
- otherwise ``distributed.LocalCluster`` with CPU workers.

Embedding tasks ask for the worker resource ``GPU=1``; every worker started here
offers exactly one, so one model runs per worker (per GPU) while its other threads
read input and write Zarr. No CUDA call is made in this process: GPUs are counted
with NVML, so the client never claims a device. dask-cuda is imported only where
GPUs are used; job scripts are generated without it.

Every cluster started here speaks TLS only, with credentials made for the run
(:mod:`virnuc_dask.cluster.credentials`), and its dashboard listens on
``settings.dashboard_address`` (localhost by default); the log says how to reach it
(:mod:`virnuc_dask.cluster.dashboard_access`). A scheduler given with ``scheduler`` /
``scheduler_file`` is reached with the user's own Dask security settings
(``distributed.comm.tls.*``).

The output directories a run writes are held (:mod:`virnuc_dask.runlock`) before
anything starts: a second run into one of them stops at once.

Batch jobs are configured in :mod:`virnuc_dask.cluster.jobqueue`, the ranks of one
allocation in :mod:`virnuc_dask.cluster.runner`, what workers get in
:mod:`virnuc_dask.cluster.workers`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.security import Security

from virnuc_dask.cluster import credentials
from virnuc_dask.cluster.dashboard_access import NO_DASHBOARD, describe_dashboard
from virnuc_dask.cluster.guard import Guard
from virnuc_dask.cluster.jobqueue import check_submit_command, jobqueue_class, jobqueue_options
from virnuc_dask.cluster.jobs import watched_job_class
from virnuc_dask.cluster.runner import slurm_runner
from virnuc_dask.cluster.workers import WORKER_ENV, visible_gpus
from virnuc_dask.config import JOBQUEUE_SYSTEMS, Settings
from virnuc_dask.errors import ClusterError, ConfigError
from virnuc_dask.runlock import hold_directories

logger = logging.getLogger(__name__)

# Seconds the client of an interrupted --cluster slurm-runner rank waits for its close.
INTERRUPTED_CLOSE_S = 2


@dataclasses.dataclass
class RunCluster:
    """The client of a run and the guard that watches its workers (and batch jobs)."""

    client: Client
    guard: Guard | None = None

    def status_lines(self) -> list[str]:
        """Jobs without a worker yet (``job 123 pending (Resources) 4:10``) and lost workers."""
        return self.guard.status_lines() if self.guard is not None else []


@contextlib.contextmanager
def open_client(
    settings: Settings, *, client: Client | None = None, hold: Sequence[str] = ()
) -> Iterator[Client]:
    """A client on the cluster ``settings`` ask for; a cluster started here stops on exit.

    ``client``: use it instead (nothing is started); ``hold``: output directories the
    run holds while the block lasts (see :func:`open_cluster`).
    """
    with open_cluster(settings, client=client, hold=hold) as run:
        yield run.client


@contextlib.contextmanager
def open_cluster(
    settings: Settings, *, client: Client | None = None, hold: Sequence[str] = ()
) -> Iterator[RunCluster]:
    """Start or connect to the cluster ``settings`` ask for; wait (bounded) for a worker.

    Every wait ends: the :class:`Guard` stops the run with a :class:`ClusterError` that
    says why when jobs are rejected or end, or no worker comes. ``client``: run on it
    instead (nothing is started). ``hold``: output directories held for the whole
    block (:func:`~virnuc_dask.runlock.hold_directories`), taken before anything
    starts; with ``slurm-runner`` by the client rank, once the ranks are up.
    """
    if client is None and settings.cluster == "slurm-runner":
        with dask.config.set(WORKER_ENV):
            yield from _in_allocation(settings, hold)
        return
    with hold_directories(hold):
        if client is not None:
            _log_dashboard(client, None)
            yield RunCluster(client)
        elif settings.scheduler or settings.scheduler_file:
            with _connect(settings) as client, _guarded(client, settings) as guard:
                _log_dashboard(client, None)
                guard.wait_for_workers(1)
                yield RunCluster(client, guard)
        elif settings.cluster in JOBQUEUE_SYSTEMS:
            yield from _batch_jobs(settings)
        else:
            security = credentials.in_memory()
            with (
                dask.config.set(WORKER_ENV),
                _start_local(settings, security) as cluster,
                Client(cluster, security=security) as client,
            ):
                logger.info("local cluster: %d worker(s), TLS", len(cluster.workers))
                _log_dashboard(client, settings.dashboard_address)
                yield RunCluster(client)


def _log_dashboard(client: Client, address: str | None) -> None:
    """Log where the dashboard is: for a cluster started here (``address``: where its
    dashboard listens) with the way to reach it, else the scheduler's own link."""
    if address is not None:
        text = describe_dashboard(client, address)
    else:
        try:
            text = client.dashboard_link
        except KeyError:
            text = NO_DASHBOARD
    logger.info("dashboard: %s", text)


def _batch_jobs(settings: Settings) -> Iterator[RunCluster]:
    worker_type = settings.worker_type or "gpu"
    options = jobqueue_options(
        settings.cluster,
        config_file=settings.cluster_config,
        worker_type=worker_type,
        processes=settings.job_processes,
        cores=settings.job_cores,
        memory=settings.job_memory,
    )
    cls = jobqueue_class(settings.cluster)
    check_submit_command(cls.job_cls)
    jobs = settings.jobs or 1
    # The workers in the jobs read the credentials from the output directory (a file
    # system every node sees); the directory goes when the run ends.
    tls_dir, security = credentials.write(settings.out)
    options["protocol"] = "tls://"
    options["scheduler_options"] = {
        **(options.get("scheduler_options") or {}),
        "dashboard_address": settings.dashboard_address,
    }
    try:
        with (
            cls(job_cls=watched_job_class(cls.job_cls), security=security, **options) as cluster,
            Client(cluster, security=security) as client,
            _guarded(client, settings, cluster=cluster, jobs=jobs) as guard,
        ):
            cluster.scale(jobs=jobs)
            logger.info(
                "%s: %d job(s) of %d %s worker(s) submitted (TLS); waiting for the first "
                "worker to start",
                settings.cluster,
                jobs,
                options["processes"],
                worker_type.upper(),
            )
            _log_dashboard(client, settings.dashboard_address)
            guard.wait_for_workers(1)
            yield RunCluster(client, guard)
    finally:
        credentials.remove(tls_dir)


@contextlib.contextmanager
def _guarded(
    client: Client, settings: Settings, *, cluster: Any = None, jobs: int = 0
) -> Iterator[Guard]:
    """A running guard; an error raised while it has stopped the run becomes its reason."""
    guard = Guard(
        client,
        cluster=cluster,
        system=settings.cluster if cluster else None,
        jobs=jobs,
        replacements=settings.job_replacements,
        start_timeout=settings.start_timeout,
        no_worker_timeout=settings.no_worker_timeout,
    )
    with guard:
        try:
            yield guard
        except Exception:
            if guard.failure is not None:
                raise guard.failure from None
            raise


def _in_allocation(settings: Settings, hold: Sequence[str]) -> Iterator[RunCluster]:
    # Scheduler and worker ranks stay in slurm_runner() until the client rank is done,
    # then end the process (SystemExit); only the client rank gets further.
    runner = slurm_runner(settings)
    client = Client(runner, security=runner.security)
    try:
        with hold_directories(hold), _guarded(client, settings) as guard:
            _log_dashboard(client, settings.dashboard_address)
            guard.wait_for_workers(1)
            try:
                client.wait_for_workers(runner.n_workers, timeout=settings.no_worker_timeout)
            except TimeoutError:
                logger.warning(
                    "%d of %d worker ranks connected within %g s; going on with them",
                    len(guard.workers),
                    runner.n_workers,
                    settings.no_worker_timeout,
                )
            yield RunCluster(client, guard)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            # SIGTERM (scancel, walltime) or Ctrl-C reach every rank of the step: the
            # scheduler rank is gone or going, so nothing is closed through it, and the
            # client's failing reconnection to it is expected, not worth a traceback.
            logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
            with contextlib.suppress(Exception):
                client.close(timeout=INTERRUPTED_CLOSE_S)
            raise
        _close_allocation(client, runner)
        raise
    _close_allocation(client, runner)


def _close_allocation(client: Client, runner) -> None:
    """Close the client, then stop the scheduler rank (which stops the worker ranks)."""
    with contextlib.suppress(OSError, TimeoutError):
        client.close(timeout=INTERRUPTED_CLOSE_S * 5)
    runner.close()


def _connect(settings: Settings) -> Client:
    """A client on a scheduler the user started, with the user's Dask security settings."""
    target = settings.scheduler_file or settings.scheduler
    try:
        if settings.scheduler_file or os.path.isfile(target):
            return Client(scheduler_file=target)
        if "://" not in target and ":" not in target:
            raise ConfigError(
                f"scheduler {target!r} is neither an address (tcp://host:8786) nor an "
                "existing scheduler file"
            )
        return Client(target)
    except TypeError as exc:
        if "ssl_context" not in str(exc):
            raise
        raise ConfigError(
            f"the scheduler of {target} speaks TLS, and this process has no TLS "
            "credentials: set distributed.comm.tls.ca-file, distributed.comm.tls.client.cert "
            "and distributed.comm.tls.client.key in your Dask config (~/.config/dask/, or "
            "DASK_DISTRIBUTED__COMM__TLS__... variables) to the files that cluster uses"
        ) from None


def _start_local(settings: Settings, security: Security):
    # Local workers share the terminal's process group, so Ctrl-C reaches them too. They
    # leave it to the client, which stops them (each would print a KeyboardInterrupt
    # traceback otherwise): this module is their preload, see dask_setup. Set in the
    # config, so a worker the nanny restarts gets it as well.
    preload = [*dask.config.get("distributed.worker.preload", []), __name__]
    with dask.config.set({"distributed.worker.preload": preload}):
        return local_cluster(settings, security=security)


def dask_setup(worker) -> None:
    """Preload of local workers: ignore SIGINT (Ctrl-C); the client stops the cluster."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def local_cluster(settings: Settings, *, security: Security | None):
    """The local cluster of a run: one dask-cuda worker per visible GPU, or CPU workers;
    TLS-only with ``security`` (None: plain TCP, for comparisons), its dashboard on
    ``settings.dashboard_address``."""
    gpus = visible_gpus(settings.gpus)
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise ClusterError(
                "GPUs are visible but dask-cuda is not installed: pip install 'virnuc-dask[gpu]'"
            ) from None
        # dask-cuda gives its workers an explicit preload list (its own module), which
        # replaces the configured one: pass the configured preloads (the Ctrl-C handler
        # above) explicitly, and dask-cuda adds its own after them.
        return LocalCUDACluster(
            CUDA_VISIBLE_DEVICES=",".join(gpus[: settings.workers]),
            threads_per_worker=2,
            resources={"GPU": 1},
            preload=list(dask.config.get("distributed.worker.preload", [])),
            silence_logs=_worker_log_level(),
            security=security,
            dashboard_address=settings.dashboard_address,
        )
    return LocalCluster(
        n_workers=settings.workers or 1,
        threads_per_worker=2,
        processes=True,
        resources={"GPU": 1},
        silence_logs=_worker_log_level(),
        security=security,
        dashboard_address=settings.dashboard_address,
    )


def _worker_log_level() -> int:
    """Level of Dask's own logging in local workers, which write to this terminal.

    A task's exception reaches the client and is reported there; the worker's copy
    (``Compute Failed`` with a traceback) is shown only when debugging.
    """
    return logging.WARNING if logger.isEnabledFor(logging.DEBUG) else logging.CRITICAL
