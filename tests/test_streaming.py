"""The streaming dataflow: partitions embedded while later blocks are read, result part
files written as partitions finish, decisions (dedup, duplicate read ids) equal to
those over the whole input at once, and the store's metadata checksummed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import zarr
from helpers import tiny_settings, write_duplicated_reads

from virnuc_dask.core.translate import six_frame_orfs
from virnuc_dask.dataflow.models_on_workers import load_models
from virnuc_dask.dataflow.pipeline import embedding_scratch, predict
from virnuc_dask.dataflow.result_parts import ResultParts
from virnuc_dask.dataflow.streaming import embed_inputs
from virnuc_dask.events import reporter

SLOW_S = 4.0


def slow_late_reads(chunk_id: str, sequence: str):
    """Every ORF of a chunk, the first chunk of the ``late`` file after a pause."""
    if chunk_id.startswith("late_000001_chunk_1"):
        time.sleep(SLOW_S)
    return six_frame_orfs(chunk_id, sequence)


def _scores(out: Path) -> tuple[list[str], np.ndarray]:
    lines = (out / "prediction_results.txt").read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    return [r[0] + r[1] for r in rows], np.array([[float(r[2]), float(r[3])] for r in rows])


def test_partitions_are_embedded_and_written_while_later_blocks_are_read(client, tmp_path):
    early = write_duplicated_reads(tmp_path / "early.fa", 60, prefix="early")
    late = write_duplicated_reads(tmp_path / "late.fa", 10, prefix="late", seed=4)
    settings = tiny_settings(
        [early, late], tmp_path / "out", length=500, partition_rows=16, blocksize=4096
    )
    events = []
    tick = reporter(events.append)
    facts = load_models(settings, client)  # loaded first: the run starts reading at once
    parts: list[ResultParts] = []
    with embedding_scratch(settings) as root:

        def results(blocks: int) -> ResultParts:
            parts.append(ResultParts(client, tmp_path / "out", root=root, buckets=1, blocks=blocks))
            return parts[0]

        embedded = embed_inputs(
            settings,
            client,
            root=root,
            tick=tick,
            timings={},
            select=slow_late_reads,
            results=results,
            facts=facts,
        )
        parts[0].remove()
    assert len(embedded.blocks) > 3 and len(embedded.plan) > 3
    reads = [e for e in events if e.stage == "read"]
    last_read = events.index(reads[-1])
    assert reads[-1].done == reads[-1].total == len(embedded.blocks)
    # The early file's partitions were embedded, and its blocks' part files written,
    # while the late file's first block was still being read.
    embedded_before = [e for e in events[:last_read] if e.stage == "embed" and e.partitions]
    written_before = [e for e in events[:last_read] if e.stage == "write" and e.done]
    assert embedded_before and written_before
    # The total grows as blocks are read, and ends exact.
    totals = [e.total for e in events if e.stage == "embed"]
    assert totals[-1] == len(embedded.todo) == len(embedded.plan)


def test_waves_decide_as_one_pass_over_the_whole_input(client, tmp_path):
    reads = write_duplicated_reads(tmp_path / "dup.fa", 160, share=0.3, seed=9)
    text = reads.read_text()
    # A read id given again much later: dropped as a duplicate, in a later wave.
    first = text.split("\n", 2)
    reads.write_text(text + first[0] + "\n" + first[1][::-1] + "\n")
    runs = {}
    for name, blocksize in (("waves", 2048), ("one", 2**24)):
        settings = tiny_settings(
            [reads], tmp_path / name, length=500, partition_rows=23, blocksize=blocksize
        )
        runs[name] = predict(settings, client)
    waves, one = runs["waves"], runs["one"]
    assert waves.exit_code == one.exit_code == 2  # the duplicate id
    assert waves.summary["dedup"] == one.summary["dedup"]
    assert waves.summary["counts"] == one.summary["counts"]
    ids_w, scores_w = _scores(tmp_path / "waves")
    ids_o, scores_o = _scores(tmp_path / "one")
    assert ids_w == ids_o
    assert np.abs(scores_w - scores_o).max() <= 1e-5
    assert (tmp_path / "waves" / "failed_records.tsv").read_text().count("duplicate read id") == 1
    assert (tmp_path / "waves" / "failed_records.tsv").read_text() == (
        tmp_path / "one" / "failed_records.tsv"
    ).read_text()
    stores = [zarr.open_group(tmp_path / n / "embeddings.zarr", mode="r") for n in runs]
    assert stores[0]["scores"].shape == stores[1]["scores"].shape == (len(ids_w), 2)
    assert (stores[0]["scores_source"][:] == stores[1]["scores_source"][:]).all()


def test_an_edited_zarr_json_is_named_and_put_back(client, tmp_path, caplog):
    reads = write_duplicated_reads(tmp_path / "r.fa", 40)
    settings = tiny_settings([reads], tmp_path / "out", length=500, partition_rows=16)
    clean = predict(settings, client)
    before = (tmp_path / "out" / "prediction_results.txt").read_text()
    meta = tmp_path / "out" / "embeddings.zarr" / "scores" / "zarr.json"
    original = meta.read_text()
    edited = json.loads(original)
    edited["shape"][0] += 1
    meta.write_text(json.dumps(edited))
    with caplog.at_level(logging.WARNING):
        again = predict(settings, client)
    assert again.exit_code == 0
    assert again.partitions_reused == clean.partitions  # nothing recomputed
    assert again.summary["store_metadata_damaged"] == [
        {
            "file": "scores/zarr.json",
            "problem": "differs from its recorded checksum",
            "restored": True,
        }
    ]
    assert "scores/zarr.json: differs from its recorded checksum" in caplog.text
    assert json.loads(meta.read_text()) == json.loads(original)
    assert (tmp_path / "out" / "prediction_results.txt").read_text() == before


def test_a_store_whose_metadata_cannot_be_put_back_is_started_afresh(client, tmp_path, caplog):
    reads = write_duplicated_reads(tmp_path / "r.fa", 40)
    settings = tiny_settings([reads], tmp_path / "out", length=500, partition_rows=16)
    clean = predict(settings, client)
    before = (tmp_path / "out" / "prediction_results.txt").read_text()
    (tmp_path / "out" / "embeddings.zarr" / "checksums" / "zarr.json").write_text("{garbage")
    with caplog.at_level(logging.WARNING):
        again = predict(settings, client)
    assert again.exit_code == 0
    assert again.partitions_reused == 0 and again.partitions == clean.partitions
    (problem,) = again.summary["store_metadata_damaged"]
    assert problem["file"] == "checksums/zarr.json" and not problem["restored"]
    assert "the store cannot be trusted; it is started afresh" in caplog.text
    ids, scores = _scores(tmp_path / "out")
    (tmp_path / "out" / "prediction_results.txt").write_text(before)
    ids_before, scores_before = _scores(tmp_path / "out")
    assert ids == ids_before and np.abs(scores - scores_before).max() <= 1e-5
