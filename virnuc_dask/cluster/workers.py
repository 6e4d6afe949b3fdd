"""What every worker a run starts gets: its environment, its GPU, its torch threads."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from distributed import Client

from virnuc_dask.errors import ConfigError

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
    visible = (
        None
        if env is None
        else [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    )
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
                    f"may use (CUDA_VISIBLE_DEVICES={env}); --gpus counts from 0 within them"
                )
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
