"""Faults during embedding: records that make a model fail, systemic faults, dead workers.

Faults are real: a tokenizer file whose ids leave the model's vocabulary makes
DNABERT-S's embedding lookup raise for exactly the records holding that token
(or for every record, when it is the [CLS] token), and worker processes are
killed with SIGKILL while they embed.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from helpers import REFERENCE, TINY, tiny_settings, wait_until

from virnuc_dask.cluster.workers import WORKER_ENV
from virnuc_dask.core.formats import plan_blocks, read_block
from virnuc_dask.core.orfs import orfs_from_records
from virnuc_dask.dataflow.partition_task import SYSTEMIC_FAILURES, FailureGuard, isolate_failures
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.dataflow.store import EmbeddingStore
from virnuc_dask.errors import SystemicFailure
from virnuc_dask.worker.batch_runner import SequenceTooLarge
from virnuc_dask.worker.plugin import PLUGIN_NAME

RESULTS = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "read_predictions.tsv",
    "failed_records.tsv",
)
INPUT = REFERENCE / "dev" / "basic" / "input.fa"


# -- bisection, on plain functions --------------------------------------------------------


def embedder(bad: set[int], calls: list[int], too_large: set[int] = frozenset()):
    """A stand-in model: row i embeds to [i, i]; raises when a batch holds a bad row."""

    def embed(idx: np.ndarray):
        calls.append(len(idx))
        for pos, i in enumerate(idx):
            if int(i) in too_large:
                raise SequenceTooLarge(pos, "ESM-2", "CUDA out of memory")
        if bad & set(idx.tolist()):
            raise IndexError("index out of range in self")
        return np.stack([idx, idx], axis=1).astype(np.float32), None

    return embed


def run(n: int, embed) -> tuple[dict[int, np.ndarray], list]:
    ids = [f"orf{i}" for i in range(n)]
    pieces, _, failures = isolate_failures(
        embed, np.arange(n), stage="esm", ids=ids, guard=FailureGuard()
    )
    rows = {int(i): v for idx, values in pieces for i, v in zip(idx, values, strict=True)}
    return rows, failures


def test_no_failure_is_one_call():
    calls: list[int] = []
    rows, failures = run(100, embedder(set(), calls))
    assert calls == [100] and not failures and sorted(rows) == list(range(100))


@pytest.mark.parametrize("bad", [{0}, {99}, {3, 4}, {10, 50, 97}])
def test_bisection_finds_exactly_the_failing_records(bad):
    calls: list[int] = []
    rows, failures = run(100, embedder(bad, calls))
    assert sorted(f.index for f in failures) == sorted(bad)
    assert {f.error for f in failures} == {"IndexError: index out of range in self"}
    assert sorted(rows) == sorted(set(range(100)) - bad)
    assert all((rows[i] == i).all() for i in rows)
    # Each failing record costs about two calls per halving, not one call per record.
    assert len(calls) <= 1 + 2 * len(bad) * 7


def test_a_record_too_large_alone_fails_without_bisection():
    calls: list[int] = []
    rows, failures = run(100, embedder(set(), calls, too_large={42}))
    assert [(f.index, f.error.split(":")[0]) for f in failures] == [(42, "SequenceTooLarge")]
    assert calls == [100, 99] and len(rows) == 99


def test_every_record_failing_stops_early():
    calls: list[int] = []
    with pytest.raises(SystemicFailure, match="8 records in a row failed"):
        run(2048, embedder(set(range(2048)), calls))
    assert len(calls) < 40


def test_isolated_failures_do_not_add_up_to_a_systemic_one():
    bad = set(range(0, 100, 5))  # 20 failing records, never 8 in a row
    rows, failures = run(100, embedder(bad, []))
    assert len(failures) == 20 > SYSTEMIC_FAILURES and len(rows) == 80


# -- the real pipeline ------------------------------------------------------------------------


def local_cluster(workers: int):
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        resources={"GPU": 1},
        dashboard_address=":0",
    )


@pytest.fixture(scope="module")
def client():
    with dask.config.set(WORKER_ENV), local_cluster(2) as cluster, Client(cluster) as client:
        yield client


def settings_for(out: Path, **overrides):
    return tiny_settings([INPUT], out, **{"blocksize": 4096, "partition_rows": 16, **overrides})


@pytest.fixture(scope="module")
def clean(client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    assert predict(settings_for(out), client).exit_code == 0
    return out


def orf_tokens() -> tuple[list[str], list[set[int]]]:
    from tokenizers import Tokenizer

    records = [r for b in plan_blocks([str(INPUT)]) for r in read_block(b)]
    orfs = orfs_from_records(records, 300).orfs
    tokenizer = Tokenizer.from_file(str(Path(TINY["dnabert_model"]) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encoded = tokenizer.encode_batch([o.nucleotide for o in orfs])
    return [o.id for o in orfs], [set(e.ids) for e in encoded]


def broken_dnabert(tmp_path: Path, change) -> str:
    """A copy of the tiny DNABERT-S whose tokenizer.json was edited by ``change``."""
    model = tmp_path / "dnabert"
    shutil.copytree(TINY["dnabert_model"], model)
    spec = json.loads((model / "tokenizer.json").read_text())
    change(spec)
    (model / "tokenizer.json").write_text(json.dumps(spec))
    return str(model)


def read_scores(path: Path) -> dict[str, tuple[str, float, float]]:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return {r[0]: (r[1], float(r[2]), float(r[3])) for r in rows}


def test_records_that_make_the_model_fail_are_listed_and_the_rest_finish(client, clean, tmp_path):
    ids, tokens = orf_tokens()
    seen = collections.Counter(t for ts in tokens for t in ts)
    chosen = sorted(t for t, n in seen.items() if n == 1)[:2]
    vocab_size = 4096
    expected = [orf_id for orf_id, ts in zip(ids, tokens, strict=True) if ts & set(chosen)]
    assert len(expected) == 2

    def renumber(spec):  # the two BPE pieces get ids the model has no embedding for
        inverse = {v: k for k, v in spec["model"]["vocab"].items()}
        for n, token_id in enumerate(chosen):
            spec["model"]["vocab"][inverse[token_id]] = vocab_size + n

    settings = settings_for(tmp_path / "out", dnabert_model=broken_dnabert(tmp_path, renumber))
    result = predict(settings, client)
    out = tmp_path / "out"

    assert result.exit_code == 2
    assert (result.counts.orfs_failed, result.counts.failed) == (2, 2)
    failed = [
        line.split("\t") for line in (out / "failed_records.tsv").read_text().splitlines()[1:]
    ]
    assert failed == [[i, "dnabert", "IndexError: index out of range in self"] for i in expected]
    got, want = (
        read_scores(out / "prediction_results.txt"),
        read_scores(clean / "prediction_results.txt"),
    )
    assert sorted(got) == sorted(set(want) - set(expected))
    for orf_id, (label, s1, s2) in got.items():
        assert label == want[orf_id][0]
        assert abs(s1 - want[orf_id][1]) <= 1e-5 and abs(s2 - want[orf_id][2]) <= 1e-5
    reads = {
        r.split("\t")[0]: r.split("\t")
        for r in (out / "read_predictions.tsv").read_text().splitlines()[1:]
    }
    for orf_id in expected:
        read = reads[orf_id.rsplit("_chunk_", 1)[0]]
        assert read[-1] in ("virus", "others", "failed") and read[4] != "0"
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "partial"

    # Resuming keeps the failures: their partitions are finished.
    again = predict(settings, client)
    assert again.partitions_reused == again.partitions and again.exit_code == 2
    assert (out / "failed_records.tsv").read_text().count("dnabert") == 2


def test_a_model_that_fails_on_every_record_stops_the_run(client, tmp_path):
    def break_cls(spec):  # every sequence starts with [CLS]
        spec["post_processor"]["special_tokens"]["[CLS]"]["ids"] = [4096]

    model = broken_dnabert(tmp_path, break_cls)
    # Large partitions: the task stops after 8 records in a row; small partitions
    # (fewer records than that each): the client stops after 8 records in a row.
    for rows in (64, 3):
        out = tmp_path / f"out{rows}"
        with pytest.raises(SystemicFailure, match="records in a row failed.*check the model"):
            predict(settings_for(out, dnabert_model=model, partition_rows=rows), client)
        assert EmbeddingStore(out).done_partitions() == set()
        assert not (out / "prediction_results.txt").exists()


def worker_pids(client: Client) -> dict[str, int]:
    return client.run(os.getpid)


def has_models(dask_worker) -> bool:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return plugin is not None and bool(plugin.adapters)


@contextlib.contextmanager
def two_workers(restart: bool):
    """Two one-thread workers: both under nannies (a killed one is restarted), or one
    started as a separate ``dask worker --no-nanny`` process (a killed one is gone)."""
    with (
        dask.config.set(WORKER_ENV),
        local_cluster(2 if restart else 1) as cluster,
        Client(cluster) as client,
    ):
        if restart:
            yield client, None
            return
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dask")),
                "worker",
                cluster.scheduler_address,
                "--no-nanny",
                "--nthreads",
                "1",
                "--resources",
                "GPU=1",
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client.wait_for_workers(2, timeout=120)
            yield client, proc.pid
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "gone"])
def test_worker_killed_while_embedding_loses_nothing(clean, tmp_path, restart):
    """SIGKILL one of two workers after the first partition; the run ends as if unharmed."""
    with two_workers(restart) as (client, external):
        before = worker_pids(client)
        killed: dict[str, Any] = {}

        def kill_once(event):
            done = event.done
            if event.stage == "embed" and done >= 1 and not killed:
                # Workers hold no ORF tables: those are in the scratch beside the store.
                tables = sum(
                    1
                    for keys in client.has_what().values()
                    for key in keys
                    if str(key).startswith("read_orfs")
                )
                victim = (
                    event.partitions[0].worker
                    if external is None
                    else next(w for w, pid in before.items() if pid == external)
                )
                os.kill(before[victim], signal.SIGKILL)
                killed.update(at=done, victim=victim, tables=tables)

        result = predict(settings_for(tmp_path), client, progress=kill_once)
        if restart:
            client.wait_for_workers(2, timeout=120)
        after = worker_pids(client)
        # The restarted worker set the model plugin up by itself. It loads off its event
        # loop, so it may connect (and the run end) before its models are ready: wait.
        models_loaded = wait_until(
            lambda: (loaded := client.run(has_models)) and all(loaded.values()) and loaded,
            60,
            interval=0.25,
            what="every worker's models, the restarted one's included",
        )

    assert killed and killed["at"] < result.partitions
    assert killed["tables"] == 0  # nothing read had to be read again
    assert before[killed["victim"]] not in after.values()
    assert len(after) == (2 if restart else 1)
    assert list(models_loaded.values()) == [True] * len(after)
    assert result.exit_code == 0
    for name in RESULTS:
        assert (tmp_path / name).read_bytes() == (clean / name).read_bytes(), name
    a, b = zarr.open_group(tmp_path / "embeddings.zarr"), zarr.open_group(clean / "embeddings.zarr")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in b.array_keys():
        assert np.array_equal(a[name][:], b[name][:]), name
