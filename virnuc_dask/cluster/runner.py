"""dask-jobqueue's ``SLURMRunner``: the ranks of one ``srun`` become the scheduler, the
client and the workers of a run, speaking TLS with credentials made for that run.

Rank 0 writes the credentials into ``OUT/.tls-<job>.<step>.<restart>/`` (mode 0700,
files 0600) before it starts the scheduler, and removes them when it ends; the other
ranks wait for them (bounded). The scheduler file rank 0 writes is readable by the
user alone."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from distributed.core import rpc

from virnuc_dask.cluster import credentials
from virnuc_dask.cluster.jobqueue import import_jobqueue
from virnuc_dask.cluster.workers import visible_gpus
from virnuc_dask.config import Settings
from virnuc_dask.errors import ConfigError

# Seconds the other ranks wait for rank 0 to write the run's credentials.
CREDENTIALS_WAIT_S = 120.0


def slurm_runner(settings: Settings):
    """dask-jobqueue's ``SLURMRunner``: this rank becomes scheduler, client or worker.

    Rank 0 runs the scheduler and rank 1 the client (the rest of the command); every
    other rank runs a worker: with ``worker_type`` gpu (the default) a dask-cuda
    ``CUDAWorker`` (one worker per GPU of its node), with cpu one CPU worker. The
    scheduler file goes into the output directory, named after the job id. Scheduler
    and worker ranks exit when the client rank is done. The returned runner (client
    rank) carries the run's credentials as ``security``.
    """
    import_jobqueue()
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
                "request GPUs (#SBATCH --gres=gpu:N) or pass --worker-type cpu"
            )
        worker_class = "dask_cuda.CUDAWorker"  # takes resources as text, like its CLI
        worker_options = {"nthreads": max(1, cpus // max(1, len(gpus))), "resources": "GPU=1"}
    else:
        worker_class = "distributed.Nanny"
        worker_options = {"nthreads": settings.threads or 2, "resources": {"GPU": 1}}
    if os.environ.get("TMPDIR"):
        worker_options["local_directory"] = os.environ["TMPDIR"]
    rank = int(os.environ.get("SLURM_PROCID") or 0)
    tls_dir = out / _credentials_name()
    if rank == 0:
        # Everything the scheduler rank writes (its scheduler file) is the user's alone.
        os.umask(0o077)
        _, security = credentials.write(out, tls_dir.name)
    else:
        security = credentials.wait(
            tls_dir, timeout=CREDENTIALS_WAIT_S, writer="rank 0 (the scheduler)"
        )
    worker_options["security"] = security
    try:
        runner = SLURMRunner(
            scheduler_file=str(out / ".scheduler-{job_id}.json"),
            scheduler_options={
                "protocol": "tls",
                "security": security,
                "dashboard_address": settings.dashboard_address,
            },
            worker_class=worker_class,
            worker_options=worker_options,
        )
    except RuntimeError as exc:
        raise ConfigError(f"--cluster slurm-runner runs as ranks of srun: {exc}") from None
    finally:
        if rank == 0:  # the scheduler has ended (or never started): the run is over
            credentials.remove(tls_dir)
    # The client rank: the runner's own connection to the scheduler (it stops the
    # scheduler at the end) speaks TLS too; Client(runner) takes ``security``.
    runner.security = security
    runner.scheduler_comm = rpc(
        runner.scheduler_address, connection_args=security.get_connection_args("client")
    )
    return runner


def _credentials_name() -> str:
    """The credentials directory of this job step (a requeued job gets new ones)."""
    env = os.environ
    ids = (env.get(k, "0") for k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT"))
    return f"{credentials.PREFIX}{'.'.join(ids)}"


def _exit_quietly(*_: object) -> None:
    sys.exit(0)
