"""dask-jobqueue batch clusters (SLURM, PBS): the packaged job profiles of
``jobqueue.yaml`` beside this module (merged into ``dask.config`` as defaults), the user's
``--cluster-config``, the project's GPU request, and the job script that is submitted.

Usage::

    print(job_script("slurm"))
    #!/usr/bin/env bash
    #SBATCH -J virnuc-dask
    ...
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import yaml
from dask.utils import format_bytes, parse_bytes

from virnuc_dask.cluster.jobs import watched_job_class
from virnuc_dask.cluster.workers import WORKER_ENV_EXPORT
from virnuc_dask.config import JOBQUEUE_SYSTEMS, WORKER_TYPES
from virnuc_dask.errors import ConfigError

JOBQUEUE_DEFAULTS = Path(__file__).with_name("jobqueue.yaml")


def import_jobqueue():
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
        return
    # A ``dask.config.set({"jobqueue...": ...})`` entered before the first registration
    # removes the whole section when it ends: merge the defaults back under what is set,
    # the later registered (ours, after dask_jobqueue's) first.
    for defaults in reversed(dask.config.defaults):
        if "jobqueue" in defaults:
            dask.config.update(
                dask.config.config, {"jobqueue": defaults["jobqueue"]}, priority="old"
            )


def worker_profile(worker_type: str) -> dict[str, Any]:
    """Job size and worker command of ``--worker-type`` (``worker-types`` in jobqueue.yaml)."""
    if worker_type not in WORKER_TYPES:
        raise ConfigError(
            f"worker type must be one of {', '.join(WORKER_TYPES)}, got {worker_type!r}"
        )
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
            "'jobqueue' (jobqueue: slurm: queue: gpu ...)"
        )
    sections = values["jobqueue"] or {}
    if not isinstance(sections, dict) or set(sections) - set(JOBQUEUE_SYSTEMS):
        raise ConfigError(
            f"{path}: jobqueue must hold sections {' and/or '.join(JOBQUEUE_SYSTEMS)}"
        )
    section = sections.get(system) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: jobqueue.{system} must be a mapping of settings")
    return section


_RENAMED = {"name": "job_name"}
# Deprecated dask-jobqueue keys, folded into their successors so that nothing is lost when
# the successor is set here.
_DEPRECATED = {
    "extra": "worker_extra_args",
    "env_extra": "job_script_prologue",
    "job_extra": "job_extra_directives",
    "header_skip": "job_directives_skip",
    "project": "account",
}
_GPU_DIRECTIVE = ("--gres=gpu", "--gpus", "-G ", "-G=", "--gres gpu")


def jobqueue_options(
    system: str,
    *,
    config_file: str | os.PathLike[str] | None = None,
    worker_type: str = "gpu",
    processes: int | None = None,
    cores: int | None = None,
    memory: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for dask-jobqueue's ``SLURMCluster``/``PBSCluster``.

    The worker type's profile < packaged defaults < Dask's config < ``config_file`` <
    ``processes``/``cores``/``memory``; then the GPU request (``gpu`` workers) and the
    nanny environment line are added (see ``jobqueue.yaml``), the GPU request only
    where ``job-directives-skip`` does not name it. Every value is passed explicitly,
    so jobs submitted later do not depend on the config at that time.
    """
    if system not in JOBQUEUE_SYSTEMS:
        raise ConfigError(
            f"cluster system must be one of {', '.join(JOBQUEUE_SYSTEMS)}, got {system!r}"
        )
    profile = worker_profile(worker_type)
    import_jobqueue()
    section = dict(dask.config.get(f"jobqueue.{system}"))
    if config_file is not None:
        given = _read_cluster_config(config_file, system)
        unknown = sorted(set(given) - set(section))
        if unknown:
            raise ConfigError(
                f"{config_file}: unknown jobqueue.{system} key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(section))}"
            )
        section.update(given)
    options = {_RENAMED.get(k, k.replace("-", "_")): v for k, v in section.items() if v is not None}
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
            f"integer), got {processes!r}"
        )
    cores = options["cores"]
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < processes:
        raise ConfigError(
            f"jobqueue.{system}.cores must be the CPUs per job, at least processes "
            f"({processes}), got {cores!r}"
        )
    try:
        parse_bytes(options["memory"])
    except (TypeError, ValueError):
        raise ConfigError(
            f"jobqueue.{system}.memory must be the host memory per job, e.g. 32GiB, got "
            f"{options['memory']!r}"
        ) from None
    options["job_script_prologue"] = [
        *(options.get("job_script_prologue") or []),
        WORKER_ENV_EXPORT,
    ]
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
        if not any(d.strip().startswith(_GPU_DIRECTIVE) for d in directives) and not _skipped(
            f"#SBATCH {gres}", options
        ):
            directives.append(gres)
        options["job_extra_directives"] = directives
        return
    options["job_script_prologue"] = [*options["job_script_prologue"], *pbs_gpu_lines(processes)]
    if options.get("resource_spec") is None:
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        memory = pbs_format_bytes_ceil(parse_bytes(options["memory"]))
        spec = f"select=1:ncpus={options['cores']}:ngpus={processes}:mem={memory}"
        if not _skipped(f"#PBS -l {spec}", options):
            options["resource_spec"] = spec


def pbs_gpu_lines(gpus: int) -> list[str]:
    """Shell lines of a PBS GPU job that keep its workers on the job's own GPUs.

    `dask cuda worker` starts a worker on every GPU NVML lists unless
    ``CUDA_VISIBLE_DEVICES`` is set, and PBS sets it only where a site's cgroup hook
    does. Without it: the GPUs of ``PBS_GPUFILE`` (Torque: ``host-gpuN`` lines) when
    the site writes one; else the job stops, with a message, when the node has more
    GPUs than the job asked for (they belong to other jobs).
    """
    return [
        'if [ -z "${CUDA_VISIBLE_DEVICES+set}" ] && [ -r "${PBS_GPUFILE:-}" ]; then '
        'export CUDA_VISIBLE_DEVICES="$(sed -n "s/.*-gpu//p" "$PBS_GPUFILE" | paste -sd, -)"; '
        "fi",
        'if [ -z "${CUDA_VISIBLE_DEVICES+set}" ] && '
        f'[ "$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")" -gt {gpus} ]; then '
        'echo "virnuc-dask: CUDA_VISIBLE_DEVICES is not set and this node has more GPUs '
        f"than the job's {gpus}: the workers would use other jobs' GPUs. Set it in "
        'job-script-prologue of --cluster-config from what the site exposes" >&2; exit 1; fi',
    ]


def per_gpu_worker(options: Mapping[str, Any]) -> dict[str, Any]:
    """Threads and memory limit each worker process gets from ``jobqueue_options``."""
    processes = options["processes"]
    return {
        "threads": int(options["cores"] / processes),
        "memory_limit": format_bytes(parse_bytes(options["memory"]) / processes),
    }


_JOB_PROFILE = ("worker_type", "processes", "cores", "memory")


def _options(system: str, config_file, overrides: dict[str, Any]) -> dict[str, Any]:
    profile = {k: overrides.pop(k) for k in _JOB_PROFILE if k in overrides}
    if profile.get("worker_type") is None:
        profile.pop("worker_type", None)
    return {**jobqueue_options(system, config_file=config_file, **profile), **overrides}


def jobqueue_cluster(
    system: str, *, config_file: str | os.PathLike[str] | None = None, **overrides: Any
):
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
    cls = jobqueue_class(system)
    return cls(job_cls=watched_job_class(cls.job_cls), **options)


def jobqueue_class(system: str):
    jobqueue = import_jobqueue()
    return {"slurm": jobqueue.SLURMCluster, "pbs": jobqueue.PBSCluster}[system]


def job_script(
    system: str,
    *,
    config_file: str | os.PathLike[str] | None = None,
    scheduler: str = "tcp://<scheduler>:8786",
    **overrides: Any,
) -> str:
    """The script one job of ``jobqueue_cluster`` runs, built without starting anything.

    Takes the same ``worker_type``/``processes``/``cores``/``memory`` and overrides.
    """
    options = _options(system, config_file, dict(overrides))
    for cluster_only in ("scheduler_options", "shared_temp_directory"):
        options.pop(cluster_only, None)
    job_cls = jobqueue_class(system).job_cls
    name = f"{options.get('job_name', 'worker')}-0"
    return job_cls(scheduler=scheduler, name=name, **options).job_script()


def check_submit_command(job_cls) -> None:
    command = job_cls.submit_command
    if shutil.which(command) is None:
        raise ConfigError(
            f"{command} not found: --cluster {job_cls.config_name} submits batch jobs "
            f"and must run where {command} works (a login node of the cluster)"
        )
