"""Which Dask cluster a run uses, started and stopped in one place.

- ``scheduler`` set: connect to a running scheduler (address or scheduler file);
- GPUs visible to NVML: ``dask_cuda.LocalCUDACluster``, one worker per GPU;
- otherwise: ``distributed.LocalCluster`` with CPU workers.

Embedding tasks ask for the worker resource ``GPU=1``; every worker started here
offers exactly one, so one model runs per worker (per GPU) while its other
thread reads input and writes Zarr. No CUDA call is made in this process: GPUs
are counted with NVML, so the client never claims a device.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import dask
from distributed import Client, LocalCluster

logger = logging.getLogger(__name__)


def visible_gpus(gpus: str | None = None) -> list[str]:
    """GPU ids to use: ``gpus`` ("0,1"), else CUDA_VISIBLE_DEVICES, else all NVML devices."""
    if gpus:
        return [g.strip() for g in gpus.split(",") if g.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
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


# Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers. Setting that variable
# turns off glibc's dynamic mmap threshold, so every large torch CPU buffer is mmap'ed and
# unmapped again per operation: embedding ran 3-4x slower in such workers (2k-ORF
# partition, tiny models, CPU). None unsets it (see distributed.nanny._get_env_variables).
WORKER_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


@contextlib.contextmanager
def open_client(settings) -> Iterator[Client]:
    """A client on the cluster ``settings`` ask for; the cluster stops on exit if started here."""
    if settings.scheduler:
        target = settings.scheduler
        client = Client(scheduler_file=target) if os.path.isfile(target) else Client(target)
        with client:
            yield client
        return
    with dask.config.set(WORKER_ENV), _start_cluster(settings) as cluster, \
            Client(cluster) as client:
        logger.info("cluster: %d workers, dashboard %s", len(cluster.workers),
                    client.dashboard_link)
        yield client


def _start_cluster(settings):
    gpus = visible_gpus(settings.gpus)
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise RuntimeError(
                "GPUs are visible but dask-cuda is not installed: "
                "pip install 'virnuc-dask[gpu]'") from None
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(gpus[: settings.workers]),
                                threads_per_worker=2, resources={"GPU": 1})
    return LocalCluster(n_workers=settings.workers or 1, threads_per_worker=2, processes=True,
                        resources={"GPU": 1})
