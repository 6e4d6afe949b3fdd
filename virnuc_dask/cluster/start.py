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

from virnuc_dask.config import JOBQUEUE_SYSTEMS, ConfigError

logger = logging.getLogger(__name__)

JOBQUEUE_DEFAULTS = Path(__file__).with_name("jobqueue.yaml")

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


@contextlib.contextmanager
def open_client(settings) -> Iterator[Client]:
    """A client on the cluster ``settings`` ask for; a cluster started here stops on exit."""
    if settings.scheduler or settings.scheduler_file:
        with _connect(settings) as client:
            yield client
    elif settings.cluster in JOBQUEUE_SYSTEMS:
        options = jobqueue_options(settings.cluster, config_file=settings.cluster_config)
        cls = _jobqueue_class(settings.cluster)
        _check_submit_command(cls.job_cls)
        with cls(**options) as cluster, Client(cluster) as client:
            jobs = settings.jobs or 1
            cluster.scale(jobs=jobs)
            logger.info("%s: %d job(s) of %d GPU worker(s) submitted; waiting for the first "
                        "worker to start", settings.cluster, jobs, options["processes"])
            client.wait_for_workers(1)
            yield client
    elif settings.cluster == "slurm-runner":
        with dask.config.set(WORKER_ENV), slurm_runner(settings) as runner, \
                Client(runner) as client:
            client.wait_for_workers(runner.n_workers)
            yield client
    else:
        with dask.config.set(WORKER_ENV), _start_local(settings) as cluster, \
                Client(cluster) as client:
            logger.info("local cluster: %d worker(s)", len(cluster.workers))
            yield client


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
        dask.config.update_defaults(yaml.safe_load(JOBQUEUE_DEFAULTS.read_text()))
        _registered.append(JOBQUEUE_DEFAULTS)


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
                     ) -> dict[str, Any]:
    """Keyword arguments for dask-jobqueue's ``SLURMCluster``/``PBSCluster``.

    Packaged defaults < Dask's config < ``config_file``; then the GPU request and the
    nanny environment line are added (see ``jobqueue.yaml``). Every value is passed
    explicitly, so jobs submitted later do not depend on the config at that time.
    """
    if system not in JOBQUEUE_SYSTEMS:
        raise ConfigError(
            f"cluster system must be one of {', '.join(JOBQUEUE_SYSTEMS)}, got {system!r}")
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
    processes = options.get("processes")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(
            f"jobqueue.{system}.processes must be the number of GPUs per job (a positive "
            f"integer), got {processes!r}")
    for key in ("cores", "memory"):
        if key not in options:
            raise ConfigError(f"jobqueue.{system}.{key} is not set; it sizes each job")
    options["job_script_prologue"] = [*(options.get("job_script_prologue") or []),
                                      WORKER_ENV_EXPORT]
    if system == "slurm":
        directives = list(options.get("job_extra_directives") or [])
        if not any(d.strip().startswith(_GPU_DIRECTIVE) for d in directives):
            directives.append(f"--gres=gpu:{processes}")
        options["job_extra_directives"] = directives
    elif options.get("resource_spec") is None:
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        memory = pbs_format_bytes_ceil(parse_bytes(options["memory"]))
        options["resource_spec"] = (
            f"select=1:ncpus={options['cores']}:ngpus={processes}:mem={memory}")
    return options


def per_gpu_worker(options: Mapping[str, Any]) -> dict[str, Any]:
    """Threads and memory limit each dask-cuda worker gets from ``jobqueue_options``."""
    processes = options["processes"]
    return {"threads": int(options["cores"] / processes),
            "memory_limit": format_bytes(parse_bytes(options["memory"]) / processes)}


def jobqueue_cluster(system: str, *, config_file: str | os.PathLike[str] | None = None,
                     **overrides: Any):
    """A dask-jobqueue cluster of dask-cuda GPU workers; ``cluster.scale(jobs=n)`` submits.

    ``overrides`` are keyword arguments of ``SLURMCluster``/``PBSCluster`` and win
    over every configuration file.

    Usage::

        cluster = jobqueue_cluster("slurm", queue="gpu", walltime="12:00:00")
        cluster.scale(jobs=4)

    """
    options = {**jobqueue_options(system, config_file=config_file), **overrides}
    return _jobqueue_class(system)(**options)


def _jobqueue_class(system: str):
    jobqueue = _import_jobqueue()
    return {"slurm": jobqueue.SLURMCluster, "pbs": jobqueue.PBSCluster}[system]


def job_script(system: str, *, config_file: str | os.PathLike[str] | None = None,
               scheduler: str = "tcp://<scheduler>:8786", **overrides: Any) -> str:
    """The script one job of ``jobqueue_cluster`` runs, built without starting anything."""
    options = {**jobqueue_options(system, config_file=config_file), **overrides}
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
    other rank runs a worker: a dask-cuda ``CUDAWorker`` (one worker per GPU of its
    node) where GPUs are visible, else one CPU worker. The scheduler file goes into
    the output directory, named after the job id. Scheduler and worker ranks exit
    when the client rank is done.
    """
    _import_jobqueue()
    from dask_jobqueue.slurm import SLURMRunner

    # The runner stops scheduler and worker ranks by sending them SIGINT once the client
    # rank is done: that must end the process with status 0, not as an interruption.
    signal.signal(signal.SIGINT, _exit_quietly)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpus(settings.gpus)
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
    if gpus:
        worker_class = "dask_cuda.CUDAWorker"  # takes resources as text, like its CLI
        worker_options = {"nthreads": max(1, cpus // len(gpus)), "resources": "GPU=1"}
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


# -- `virnuc-dask job-script` --------------------------------------------------------------
