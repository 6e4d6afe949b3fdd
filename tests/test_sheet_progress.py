"""The progress of a sequencing run: one line per sample with its stage and counts."""

from __future__ import annotations

import csv
import io
import logging

from helpers import TINY, write_sequencing_run
from rich.console import Console

from virnuc_dask.cli.sample_progress import SheetProgress
from virnuc_dask.config import load_settings
from virnuc_dask.core.samplesheet import read_samplesheet
from virnuc_dask.dataflow.sequencing_run import predict_samples
from virnuc_dask.events import ProgressEvent

OVERRIDES = {"length": 300, "precision": "fp32", "blocksize": 2048, "partition_rows": 37, **TINY}


def test_every_sample_has_its_line_with_its_stage_and_counts(client, tmp_path, caplog):
    sheet = read_samplesheet(write_sequencing_run(tmp_path / "in"))
    settings = load_settings(overrides={"out": str(tmp_path / "RUN"), **OVERRIDES})
    seen: list[ProgressEvent] = []
    caplog.set_level(logging.INFO, logger="virnuc_dask.cli.sample_progress")
    with SheetProgress(enabled=False, interval=0.05) as progress:

        def both(event: ProgressEvent) -> None:
            seen.append(event)
            progress(event)

        result = predict_samples(settings, client, sheet=sheet, progress=both)
    assert result.exit_code == 0
    with open(tmp_path / "RUN" / "samples.tsv") as fh:
        rows = {r["sample"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert list(progress.samples) == [s.name for s in sheet]
    for name, line in progress.samples.items():
        assert line.status == "complete" and line.stage == "complete", name
        assert str(line.reads) == rows[name]["reads"] and str(line.orfs) == rows[name]["orfs"]
        assert line.partitions is not None and line.partitions[0] == line.partitions[1] > 0
        assert line.embedded == line.orfs
    # Each sample's own dataflow events reach the display under its name.
    stages = {(e.sample, e.stage) for e in seen}
    for sample in sheet:
        assert {(sample.name, s) for s in ("read", "embed", "write")} <= stages
    assert progress.line().startswith("samples 4/4 done | casava complete, 80 reads")
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("samples ") and " | casava " in m for m in logged)
    assert "sample contigs complete (14 reads" in "\n".join(logged)

    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(progress)
    text = console.export_text()
    assert "samples: 4/4 done" in text
    for sample in sheet:
        assert f"✓ {sample.name}" in text


def test_a_running_sample_shows_its_stage():
    now = iter(range(100))
    progress = SheetProgress(enabled=False, interval=3600, clock=lambda: float(next(now)))
    progress(ProgressEvent("samples", 0, 2, sample="S1", status="running"))
    progress(ProgressEvent("embed", 0, 5, orfs_total=400, orfs_reused=37, sample="S1"))
    progress(ProgressEvent("embed", 3, 5, sample="S1"))
    progress(ProgressEvent("samples", 1, 2, sample="S2", status="failed"))
    progress(ProgressEvent("read", 0, 3))  # not a sample's: ignored
    assert progress.line() == (
        "samples 1/2 done | S1 embedding 3/5 partitions, 400 ORFs, 37 reused | S2 failed"
    )
