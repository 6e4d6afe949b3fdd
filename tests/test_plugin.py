"""The model plugin on real clusters: a worker that cannot load its models costs that
worker only; one embedding task at a time per worker; loading off the event loop.

The failing worker is real: its own process, whose ``HOME`` (and so a model path
under ``~``) or ``CUDA_VISIBLE_DEVICES`` differs from the healthy one's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster
from helpers import REFERENCE, TINY, tiny_settings, two_workers

from virnuc_dask.cluster.workers import WORKER_ENV
from virnuc_dask.config import Settings
from virnuc_dask.core.formats import plan_blocks, read_block
from virnuc_dask.core.orfs import orfs_from_records
from virnuc_dask.dataflow.embedding_graph import check_embedding_workers
from virnuc_dask.dataflow.models_on_workers import model_status, wait_for_models
from virnuc_dask.dataflow.partition_task import PartitionJob, embed_partition
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.errors import ModelLoadError
from virnuc_dask.worker.plugin import EVENT_TOPIC, ModelPlugin, ModelSpec

INPUT = REFERENCE / "dev" / "basic" / "input.fa"
RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "read_predictions.tsv")


def settings_for(out: Path, **overrides):
    values = {"blocksize": 4096, "partition_rows": 16, "threads": 1, **overrides}
    return tiny_settings([INPUT], out, **values)


def worker_named(client: Client, name: str) -> str:
    return next(
        a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["name"] == name
    )


def test_a_worker_that_cannot_load_a_model_costs_that_worker_not_the_run(tmp_path):
    home_good, home_bad = tmp_path / "home-good", tmp_path / "home-bad"
    models = home_good / "models"
    models.mkdir(parents=True)
    home_bad.mkdir()
    esm = Path(TINY["esm_model"])
    for name in (esm.name, esm.stem + "-contact-regression.pt"):
        shutil.copy(esm.parent / name, models / name)
    # "~/models/..." is a file on one worker's node and missing on the other's.
    on_home = f"~/models/{esm.name}"
    with (
        dask.config.set(WORKER_ENV),
        two_workers(good={"HOME": str(home_good)}, bad={"HOME": str(home_bad)}) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        bad = worker_named(client, "bad")
        result = predict(settings_for(tmp_path / "run", esm_model=on_home), client)
        left = set(client.scheduler_info(n_workers=-1)["workers"])
        # The same input with the models everyone has, on the worker that is left.
        clean = predict(settings_for(tmp_path / "clean"), client)

    assert result.exit_code == 0 and clean.exit_code == 0
    assert clean.summary["workers_failed"] == []  # that failure belonged to the first run
    for name in RESULTS:
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), (
            name
        )
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    (failed,) = summary["workers_failed"]
    assert failed["worker"] == bad and bad not in left  # closed, not restarted
    assert "could not load the models" in failed["error"] and bad in failed["error"]
    assert "ESM-2 model file not found" in failed["error"]
    assert str(home_bad) in failed["error"]
    assert set(summary["workers"]) == left and bad not in summary["workers"]
    (healthy,) = summary["workers"].values()
    assert healthy["device"] == "cpu" and healthy["precision"] == "fp32"
    assert healthy["share"] == 1.0 and healthy["gpu"] == "no GPU"


def test_a_gpu_worker_whose_torch_cannot_use_the_gpu_is_refused(tmp_path):
    """CUDA_VISIBLE_DEVICES names a GPU, torch here is a CPU build: that worker fails
    with the reason instead of embedding on the CPU; the other one runs everything."""
    with (
        dask.config.set(WORKER_ENV),
        two_workers(cpu={}, gpu={"CUDA_VISIBLE_DEVICES": "0"}) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        gpu = worker_named(client, "gpu")
        result = predict(settings_for(tmp_path / "run"), client)
    summary = result.summary
    (failed,) = summary["workers_failed"]
    assert failed["worker"] == gpu
    assert "started for GPUs (CUDA_VISIBLE_DEVICES=0)" in failed["error"]
    assert "--device cpu" in failed["error"]
    assert result.exit_code == 0 and [w["device"] for w in summary["workers"].values()] == ["cpu"]


def test_every_worker_failing_ends_the_run_with_their_errors(tmp_path):
    with (
        dask.config.set(WORKER_ENV),
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        t = time.monotonic()
        with pytest.raises(
            ModelLoadError,
            match="no worker could load the models: worker "
            ".* could not load the models: ModelLoadError: .*missing.pt",
        ):
            predict(settings_for(tmp_path / "run", esm_model=str(tmp_path / "missing.pt")), client)
        assert time.monotonic() - t < 60


# -- in-process workers: one embedding task per device, loading off the loop ---------------


@pytest.fixture(scope="module")
def orfs():
    records = [r for b in plan_blocks([str(INPUT)]) for r in read_block(b)]
    return orfs_from_records(records, 300).orfs[:24]


def test_one_embedding_task_at_a_time_per_worker(orfs, tmp_path, monkeypatch):
    """A worker offering two GPU slots (started by hand with --resources GPU=2) and two
    threads: the two embedding tasks still never run a forward at the same time."""
    from virnuc_dask.models.esm_fast import SdpaEsm2

    active, most = [0], [0]
    guard = threading.Lock()
    real = SdpaEsm2.forward

    def counting(self, *args, **kwargs):
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.05)  # long enough for the other task to overlap, were it allowed
            return real(self, *args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(SdpaEsm2, "forward", counting)
    job = PartitionJob(0, 0, str(tmp_path), ceilings=(("esm", 200), ("dnabert", 400)))
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            resources={"GPU": 2},
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(
            ModelPlugin(ModelSpec.from_settings(Settings(**TINY, precision="fp32")))
        )
        wait_for_models(client, timeout=60)
        futures = [
            client.submit(
                embed_partition,
                orfs[i::2],
                dataclasses.replace(job, partition=i),
                resources={"GPU": 1},
                pure=False,
            )
            for i in range(2)
        ]
        results = client.gather(futures)
    assert all(r.result.models["esm"].batches >= 2 for r in results)
    assert most[0] == 1


def test_models_load_off_the_event_loop(monkeypatch):
    """While a (slow) load runs, the worker still answers the scheduler at once."""
    started = threading.Event()
    real = ModelPlugin.load

    def slow(self):
        started.set()
        time.sleep(3)
        real(self)

    monkeypatch.setattr(ModelPlugin, "load", slow)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        t = time.monotonic()
        client.register_plugin(ModelPlugin(ModelSpec.from_settings(Settings(**TINY))))
        assert started.wait(10)
        (state,) = [s["state"] for s in model_status(client).values()]
        answered = time.monotonic() - t
        assert state == "loading" and answered < 2
        statuses = wait_for_models(client, timeout=60)
        assert [s["state"] for s in statuses.values()] == ["ready"]
        events = [msg for _, msg in client.get_events(EVENT_TOPIC)]
    assert events[-1]["state"] == "ready" and events[-1]["device"] == "cpu"


def test_waiting_for_models_is_bounded(monkeypatch):
    release = threading.Event()

    def stuck(self):  # a load that hangs (a file system that stopped answering)
        release.wait(30)
        raise OSError("gave up")

    monkeypatch.setattr(ModelPlugin, "load", stuck)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(ModelPlugin(ModelSpec.from_settings(Settings(**TINY))))
        try:
            with pytest.raises(ModelLoadError, match="within 1 s .*still loading"):
                wait_for_models(client, timeout=1)
        finally:
            release.set()


def test_esm_checkpoint_is_memory_mapped_not_copied():
    """The checkpoint's tensors are pages of the file (dropped by the kernel once copied
    into the model), not a second copy of the weights in the worker's memory."""
    from virnuc_dask.models.esm2 import read_checkpoint

    path = Path(TINY["esm_model"]).resolve()
    data = read_checkpoint(path)
    maps = Path("/proc/self/maps").read_text()
    assert str(path) in maps and data["model"]


def test_safe_loads_in_threads_do_not_withdraw_each_others_allowance():
    """The workers of an in-process cluster load their models at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    from virnuc_dask.models.classifier import load_classifier
    from virnuc_dask.models.esm2 import load_esm

    def load(n: int) -> int:
        if n % 2:
            return load_esm(TINY["esm_model"])[0].embed_dim
        return load_classifier(TINY["classifier"]).input_dim

    with ThreadPoolExecutor(4) as pool:
        widths = list(pool.map(load, range(16)))
    assert len(widths) == 16


def test_no_worker_left_names_only_this_runs_failures():
    """On a shared cluster an earlier run's load failure is not this run's reason."""
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.log_event(
            EVENT_TOPIC, {"state": "failed", "run": "earlier", "worker": "a", "error": "old"}
        )
        client.log_event(
            EVENT_TOPIC, {"state": "failed", "run": "this", "worker": "b", "error": "new one"}
        )
        deadline = time.monotonic() + 10
        while len(client.get_events(EVENT_TOPIC)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ModelLoadError) as caught:
            check_embedding_workers(client, run="this")
        assert "new one" in str(caught.value) and "old" not in str(caught.value)
