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

Usage::

    print(job_script("slurm"))
    #!/usr/bin/env bash
    #SBATCH -J virnuc-dask
    ...

"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dask
import yaml
from dask.utils import format_bytes, parse_bytes
from distributed import Client, LocalCluster

from virnuc_dask.cluster.guard import Guard
from virnuc_dask.cluster.jobs import watched_job_class
from virnuc_dask.config import JOBQUEUE_SYSTEMS, WORKER_TYPES, ConfigError

logger = logging.getLogger(__name__)

JOBQUEUE_DEFAULTS = Path(__file__).with_name("jobqueue.yaml")
# Seconds the client of an interrupted --cluster slurm-runner rank waits for its close.
INTERRUPTED_CLOSE_S = 2

# Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers. Setting that variable
# turns off glibc's dynamic mmap threshold, so every large torch CPU buffer is mmap'ed and
# unmapped again per operation: embedding ran 3-4x slower in such workers (2k-ORF
# partition, tiny models, CPU). None unsets it (see distributed.nanny._get_env_variables).
NANNY_UNSET = ("MALLOC_TRIM_THRESHOLD_",)
WORKER_ENV = {f"distributed.nanny.pre-spawn-environ.{name}": None for name in NANNY_UNSET}
# The same for nannies started from a shell (batch jobs, `dask worker` by hand). The
# variable must name the whole mapping: DASK_ variable names are lower-cased, so
# ...__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None would miss the upper-case key.
# Its value is merged into Dask's defaults, so the other entries stay.
WORKER_ENV_VARIABLE = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
WORKER_ENV_VALUE = "{" + ", ".join(f"'{name}': None" for name in NANNY_UNSET) + "}"
WORKER_ENV_EXPORT = f'export {WORKER_ENV_VARIABLE}="{WORKER_ENV_VALUE}"'


def visible_gpus(gpus: str | None = None) -> list[str]:
    """GPU ids to use: ``gpus`` ("0,1"), else CUDA_VISIBLE_DEVICES, else all NVML devices.

    Where CUDA_VISIBLE_DEVICES is set (a batch job's allocation), numbers in ``gpus``
    count within it, as torch numbers devices: ``--gpus 0`` under
    ``CUDA_VISIBLE_DEVICES=2,3`` is GPU 2, never another job's GPU 0. UUIDs pass as given.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = None if env is None else [
        g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if gpus:
        wanted = [g.strip() for g in gpus.split(",") if g.strip()]
        if visible is None:
            return wanted
        out = []
        for g in wanted:
            if not g.isdigit():
                out.append(g)
            elif int(g) < len(visible):
                out.append(visible[int(g)])
            else:
                raise ConfigError(
                    f"--gpus {gpus}: there is no GPU {g} among the {len(visible)} this job "
                    f"may use (CUDA_VISIBLE_DEVICES={env}); --gpus counts from 0 within them")
        return out
    if visible is not None:
        return visible
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return []


def torch_threads_by_host(client: Client) -> dict[str, int]:
    """Torch threads for each host's workers: its cores shared among its workers.

    Dask's nanny sets OMP_NUM_THREADS=1 in workers, so torch must be told explicitly.
    """
    cores = client.run(os.cpu_count)
    per_host: dict[str, list[int]] = {}
    for address, n in cores.items():
        per_host.setdefault(urlsplit(address).hostname or address, []).append(n or 1)
    return {host: max(1, max(ns) // len(ns)) for host, ns in per_host.items()}


@dataclasses.dataclass
class RunCluster:
    """The client of a run and the guard that watches its workers (and batch jobs)."""

    client: Client
    guard: Guard | None = None

    def status_lines(self) -> list[str]:
        """Jobs without a worker yet (``job 123 pending (Resources) 4:10``) and lost workers."""
        return self.guard.status_lines() if self.guard is not None else []


@contextlib.contextmanager
def open_client(settings) -> Iterator[Client]:
    """A client on the cluster ``settings`` ask for; a cluster started here stops on exit."""
    with open_cluster(settings) as run:
        yield run.client


@contextlib.contextmanager
def open_cluster(settings) -> Iterator[RunCluster]:
    """Start or connect to the cluster ``settings`` ask for; wait (bounded) for a worker.

    Every wait ends: the :class:`Guard` stops the run with a :class:`ClusterError` that
    says why when jobs are rejected or end, or no worker comes.
    """
    if settings.scheduler or settings.scheduler_file:
        with _connect(settings) as client, _guarded(client, settings) as guard:
            guard.wait_for_workers(1)
            yield RunCluster(client, guard)
    elif settings.cluster in JOBQUEUE_SYSTEMS:
        worker_type = settings.worker_type or "gpu"
        options = jobqueue_options(settings.cluster, config_file=settings.cluster_config,
                                   worker_type=worker_type, processes=settings.job_processes,
                                   cores=settings.job_cores, memory=settings.job_memory)
        cls = _jobqueue_class(settings.cluster)
        _check_submit_command(cls.job_cls)
        jobs = settings.jobs or 1
        with cls(job_cls=watched_job_class(cls.job_cls), **options) as cluster, \
                Client(cluster) as client, \
                _guarded(client, settings, cluster=cluster, jobs=jobs) as guard:
            cluster.scale(jobs=jobs)
            logger.info("%s: %d job(s) of %d %s worker(s) submitted; waiting for the first "
                        "worker to start", settings.cluster, jobs, options["processes"],
                        worker_type.upper())
            guard.wait_for_workers(1)
            yield RunCluster(client, guard)
    elif settings.cluster == "slurm-runner":
        with dask.config.set(WORKER_ENV):
            yield from _in_allocation(settings)
    else:
        with dask.config.set(WORKER_ENV), _start_local(settings) as cluster, \
                Client(cluster) as client:
            logger.info("local cluster: %d worker(s)", len(cluster.workers))
            yield RunCluster(client)


@contextlib.contextmanager
def _guarded(client: Client, settings, *, cluster: Any = None, jobs: int = 0
             ) -> Iterator[Guard]:
    """A running guard; an error raised while it has stopped the run becomes its reason."""
    guard = Guard(client, cluster=cluster, system=settings.cluster if cluster else None,
                  jobs=jobs, replacements=settings.job_replacements,
                  start_timeout=settings.start_timeout,
                  no_worker_timeout=settings.no_worker_timeout)
    with guard:
        try:
            yield guard
        except Exception:
            if guard.failure is not None:
                raise guard.failure from None
            raise


def _in_allocation(settings) -> Iterator[RunCluster]:
    # Scheduler and worker ranks stay in slurm_runner() until the client rank is done,
    # then end the process (SystemExit); only the client rank gets further.
    runner = slurm_runner(settings)
    client = Client(runner)
    try:
        with _guarded(client, settings) as guard:
            guard.wait_for_workers(1)
            try:
                client.wait_for_workers(runner.n_workers, timeout=settings.no_worker_timeout)
            except TimeoutError:
                logger.warning("%d of %d worker ranks connected within %g s; going on with "
                               "them", len(guard.workers), runner.n_workers,
                               settings.no_worker_timeout)
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


def _connect(settings) -> Client:
    if settings.scheduler_file:
        return Client(scheduler_file=settings.scheduler_file)
    target = settings.scheduler
    if os.path.isfile(target):
        return Client(scheduler_file=target)
    if "://" not in target and ":" not in target:
        raise ConfigError(
            f"scheduler {target!r} is neither an address (tcp://host:8786) nor an existing "
            "scheduler file")
    return Client(target)


def _start_local(settings):
    # Local workers share the terminal's process group, so Ctrl-C reaches them too. They
    # leave it to the client, which stops them (each would print a KeyboardInterrupt
    # traceback otherwise): this module is their preload, see dask_setup. Set in the
    # config, so a worker the nanny restarts gets it as well.
    preload = [*dask.config.get("distributed.worker.preload", []), __name__]
    with dask.config.set({"distributed.worker.preload": preload}):
        return _new_local_cluster(settings)


def dask_setup(worker) -> None:
    """Preload of local workers: ignore SIGINT (Ctrl-C); the client stops the cluster."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _new_local_cluster(settings):
    gpus = visible_gpus(settings.gpus)
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise RuntimeError(
                "GPUs are visible but dask-cuda is not installed: "
                "pip install 'virnuc-dask[gpu]'") from None
        # dask-cuda gives its workers an explicit preload list (its own module), which
        # replaces the configured one: pass the configured preloads (the Ctrl-C handler
        # above) explicitly, and dask-cuda adds its own after them.
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(gpus[: settings.workers]),
                                threads_per_worker=2, resources={"GPU": 1},
                                preload=list(dask.config.get("distributed.worker.preload", [])),
                                silence_logs=_worker_log_level())
    return LocalCluster(n_workers=settings.workers or 1, threads_per_worker=2, processes=True,
                        resources={"GPU": 1}, silence_logs=_worker_log_level())


def _worker_log_level() -> int:
    """Level of Dask's own logging in local workers, which write to this terminal.

    A task's exception reaches the client and is reported there; the worker's copy
    (``Compute Failed`` with a traceback) is shown only when debugging.
    """
    return logging.WARNING if logger.isEnabledFor(logging.DEBUG) else logging.CRITICAL


# -- dask-jobqueue -------------------------------------------------------------------------

def _import_jobqueue():
    """dask_jobqueue, imported without keeping the SIGINT handler its runner module installs.

    ``dask_jobqueue.runner`` replaces Ctrl-C with a bare ``sys.exit()`` at import (its
    runners stop scheduler and worker ranks with SIGINT); anywhere else a run
    interrupted that way would exit 0 instead of reporting the interruption.
    """
    previous = signal.getsignal(signal.SIGINT)
    import dask_jobqueue

    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, previous)
    _register_jobqueue_defaults()
    return dask_jobqueue


_registered: list[Path] = []


def _register_jobqueue_defaults() -> None:
    # After dask_jobqueue's own defaults: update_defaults replaces a value only while it
    # still equals the previous default, so the user's Dask config keeps priority.
    if not _registered:
        packaged = yaml.safe_load(JOBQUEUE_DEFAULTS.read_text())
        dask.config.update_defaults({"jobqueue": packaged["jobqueue"]})
        _registered.append(JOBQUEUE_DEFAULTS)


def worker_profile(worker_type: str) -> dict[str, Any]:
    """Job size and worker command of ``--worker-type`` (``worker-types`` in jobqueue.yaml)."""
    if worker_type not in WORKER_TYPES:
        raise ConfigError(
            f"worker type must be one of {', '.join(WORKER_TYPES)}, got {worker_type!r}")
    profiles = yaml.safe_load(JOBQUEUE_DEFAULTS.read_text())["worker-types"]
    return {k.replace("-", "_"): v for k, v in profiles[worker_type].items()}


def _read_cluster_config(path: str | os.PathLike[str], system: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read cluster config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or set(values) - {"jobqueue"}:
        raise ConfigError(
            f"{path}: expected dask-jobqueue's layout, a mapping with the one top-level key "
            "'jobqueue' (jobqueue: slurm: queue: gpu ...)")
    sections = values["jobqueue"] or {}
    if not isinstance(sections, dict) or set(sections) - set(JOBQUEUE_SYSTEMS):
        raise ConfigError(
            f"{path}: jobqueue must hold sections {' and/or '.join(JOBQUEUE_SYSTEMS)}")
    section = sections.get(system) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: jobqueue.{system} must be a mapping of settings")
    return section


_RENAMED = {"name": "job_name"}
# Deprecated dask-jobqueue keys, folded into their successors so that nothing is lost when
# the successor is set here.
_DEPRECATED = {"extra": "worker_extra_args", "env_extra": "job_script_prologue",
               "job_extra": "job_extra_directives", "header_skip": "job_directives_skip",
               "project": "account"}
_GPU_DIRECTIVE = ("--gres=gpu", "--gpus", "-G ", "-G=", "--gres gpu")


def jobqueue_options(system: str, *, config_file: str | os.PathLike[str] | None = None,
                     worker_type: str = "gpu", processes: int | None = None,
                     cores: int | None = None, memory: str | None = None) -> dict[str, Any]:
    """Keyword arguments for dask-jobqueue's ``SLURMCluster``/``PBSCluster``.

    The worker type's profile < packaged defaults < Dask's config < ``config_file`` <
    ``processes``/``cores``/``memory``; then the GPU request (``gpu`` workers) and the
    nanny environment line are added (see ``jobqueue.yaml``), the GPU request only
    where ``job-directives-skip`` does not name it. Every value is passed explicitly,
    so jobs submitted later do not depend on the config at that time.
    """
    if system not in JOBQUEUE_SYSTEMS:
        raise ConfigError(
            f"cluster system must be one of {', '.join(JOBQUEUE_SYSTEMS)}, got {system!r}")
    profile = worker_profile(worker_type)
    _import_jobqueue()
    section = dict(dask.config.get(f"jobqueue.{system}"))
    if config_file is not None:
        given = _read_cluster_config(config_file, system)
        unknown = sorted(set(given) - set(section))
        if unknown:
            raise ConfigError(
                f"{config_file}: unknown jobqueue.{system} key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(section))}")
        section.update(given)
    options = {_RENAMED.get(k, k.replace("-", "_")): v for k, v in section.items()
               if v is not None}
    for old, new in _DEPRECATED.items():
        if old in options:
            value = options.pop(old)
            if isinstance(value, list):
                options[new] = [*value, *(options.get(new) or [])]
            else:
                options.setdefault(new, value)
    for key, value in profile.items():
        options.setdefault(key, value)
    for key, value in (("processes", processes), ("cores", cores), ("memory", memory)):
        if value is not None:
            options[key] = value
    processes = options["processes"]
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        what = "GPUs per job" if worker_type == "gpu" else "worker processes per job"
        raise ConfigError(
            f"jobqueue.{system}.processes must be the number of {what} (a positive "
            f"integer), got {processes!r}")
    cores = options["cores"]
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < processes:
        raise ConfigError(
            f"jobqueue.{system}.cores must be the CPUs per job, at least processes "
            f"({processes}), got {cores!r}")
    try:
        parse_bytes(options["memory"])
    except (TypeError, ValueError):
        raise ConfigError(
            f"jobqueue.{system}.memory must be the host memory per job, e.g. 32GiB, got "
            f"{options['memory']!r}") from None
    options["job_script_prologue"] = [*(options.get("job_script_prologue") or []),
                                      WORKER_ENV_EXPORT]
    if worker_type == "gpu":
        _add_gpu_request(system, options)
    return options


def _skipped(line: str, options: Mapping[str, Any]) -> bool:
    # dask-jobqueue's own rule for its directives: a line containing any skip text.
    return any(skip in line for skip in options.get("job_directives_skip") or ())


def _add_gpu_request(system: str, options: dict[str, Any]) -> None:
    processes = options["processes"]
    if system == "slurm":
        directives = list(options.get("job_extra_directives") or [])
        gres = f"--gres=gpu:{processes}"
        if not any(d.strip().startswith(_GPU_DIRECTIVE) for d in directives) and \
                not _skipped(f"#SBATCH {gres}", options):
            directives.append(gres)
        options["job_extra_directives"] = directives
    elif options.get("resource_spec") is None:
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        memory = pbs_format_bytes_ceil(parse_bytes(options["memory"]))
        spec = f"select=1:ncpus={options['cores']}:ngpus={processes}:mem={memory}"
        if not _skipped(f"#PBS -l {spec}", options):
            options["resource_spec"] = spec


def per_gpu_worker(options: Mapping[str, Any]) -> dict[str, Any]:
    """Threads and memory limit each worker process gets from ``jobqueue_options``."""
    processes = options["processes"]
    return {"threads": int(options["cores"] / processes),
            "memory_limit": format_bytes(parse_bytes(options["memory"]) / processes)}


_JOB_PROFILE = ("worker_type", "processes", "cores", "memory")


def _options(system: str, config_file, overrides: dict[str, Any]) -> dict[str, Any]:
    profile = {k: overrides.pop(k) for k in _JOB_PROFILE if k in overrides}
    if profile.get("worker_type") is None:
        profile.pop("worker_type", None)
    return {**jobqueue_options(system, config_file=config_file, **profile), **overrides}


def jobqueue_cluster(system: str, *, config_file: str | os.PathLike[str] | None = None,
                     **overrides: Any):
    """A dask-jobqueue cluster; ``cluster.scale(jobs=n)`` submits.

    ``worker_type`` (``gpu``: dask-cuda workers, one per GPU; ``cpu``), ``processes``,
    ``cores`` and ``memory`` size the jobs (see :func:`jobqueue_options`); other
    ``overrides`` are keyword arguments of ``SLURMCluster``/``PBSCluster`` and win
    over every configuration file.

    Usage::

        cluster = jobqueue_cluster("slurm", worker_type="cpu", cores=16,
                                   queue="batch", walltime="12:00:00")
        cluster.scale(jobs=4)

    """
    options = _options(system, config_file, dict(overrides))
    cls = _jobqueue_class(system)
    return cls(job_cls=watched_job_class(cls.job_cls), **options)


def _jobqueue_class(system: str):
    jobqueue = _import_jobqueue()
    return {"slurm": jobqueue.SLURMCluster, "pbs": jobqueue.PBSCluster}[system]


def job_script(system: str, *, config_file: str | os.PathLike[str] | None = None,
               scheduler: str = "tcp://<scheduler>:8786", **overrides: Any) -> str:
    """The script one job of ``jobqueue_cluster`` runs, built without starting anything.

    Takes the same ``worker_type``/``processes``/``cores``/``memory`` and overrides.
    """
    options = _options(system, config_file, dict(overrides))
    for cluster_only in ("scheduler_options", "shared_temp_directory"):
        options.pop(cluster_only, None)
    job_cls = _jobqueue_class(system).job_cls
    name = f"{options.get('job_name', 'worker')}-0"
    return job_cls(scheduler=scheduler, name=name, **options).job_script()


def _check_submit_command(job_cls) -> None:
    command = job_cls.submit_command
    if shutil.which(command) is None:
        raise ConfigError(
            f"{command} not found: --cluster {job_cls.config_name} submits batch jobs "
            f"and must run where {command} works (a login node of the cluster)")


# -- one SLURM allocation ------------------------------------------------------------------

def slurm_runner(settings):
    """dask-jobqueue's ``SLURMRunner``: this rank becomes scheduler, client or worker.

    Rank 0 runs the scheduler and rank 1 the client (the rest of the command); every
    other rank runs a worker: with ``worker_type`` gpu (the default) a dask-cuda
    ``CUDAWorker`` (one worker per GPU of its node), with cpu one CPU worker. The
    scheduler file goes into the output directory, named after the job id. Scheduler
    and worker ranks exit when the client rank is done.
    """
    _import_jobqueue()
    from dask_jobqueue.slurm import SLURMRunner

    # The runner stops scheduler and worker ranks by sending them SIGINT once the client
    # rank is done: that must end the process with status 0, not as an interruption.
    signal.signal(signal.SIGINT, _exit_quietly)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
    if (settings.worker_type or "gpu") == "gpu":
        gpus = visible_gpus(settings.gpus)
        if not gpus and int(os.environ.get("SLURM_PROCID") or 0) >= 2:
            raise ConfigError(
                "--cluster slurm-runner with GPU workers (--worker-type gpu, the default), "
                f"but this worker rank on {os.uname().nodename} sees no GPU "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): "
                "request GPUs (#SBATCH --gres=gpu:N) or pass --worker-type cpu")
        worker_class = "dask_cuda.CUDAWorker"  # takes resources as text, like its CLI
        worker_options = {"nthreads": max(1, cpus // max(1, len(gpus))), "resources": "GPU=1"}
    else:
        worker_class = "distributed.Nanny"
        worker_options = {"nthreads": settings.threads or 2, "resources": {"GPU": 1}}
    if os.environ.get("TMPDIR"):
        worker_options["local_directory"] = os.environ["TMPDIR"]
    try:
        return SLURMRunner(scheduler_file=str(out / ".scheduler-{job_id}.json"),
                           worker_class=worker_class, worker_options=worker_options)
    except RuntimeError as exc:
        raise ConfigError(f"--cluster slurm-runner runs as ranks of srun: {exc}") from None


def _exit_quietly(*_: object) -> None:
    sys.exit(0)

