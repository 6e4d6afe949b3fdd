"""dask-jobqueue's ``SLURMRunner``: the ranks of one ``srun`` become the scheduler, the
client and the workers of a run."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from virnuc_dask.cluster.jobqueue import import_jobqueue
from virnuc_dask.cluster.workers import visible_gpus
from virnuc_dask.config import Settings
from virnuc_dask.errors import ConfigError


def slurm_runner(settings: Settings):
    """dask-jobqueue's ``SLURMRunner``: this rank becomes scheduler, client or worker.

    Rank 0 runs the scheduler and rank 1 the client (the rest of the command); every
    other rank runs a worker: with ``worker_type`` gpu (the default) a dask-cuda
    ``CUDAWorker`` (one worker per GPU of its node), with cpu one CPU worker. The
    scheduler file goes into the output directory, named after the job id. Scheduler
    and worker ranks exit when the client rank is done.
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
    try:
        return SLURMRunner(
            scheduler_file=str(out / ".scheduler-{job_id}.json"),
            worker_class=worker_class,
            worker_options=worker_options,
        )
    except RuntimeError as exc:
        raise ConfigError(f"--cluster slurm-runner runs as ranks of srun: {exc}") from None


def _exit_quietly(*_: object) -> None:
    sys.exit(0)
