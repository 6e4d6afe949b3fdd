"""A sequencing run holds its run directory and every sample's folder: a one-sample
``predict`` into a sample's folder started beside it stops at once, naming the run."""

from __future__ import annotations

import contextlib

from helpers import TINY, model_flags, write_sequencing_run

from virnuc_dask.cli.main import main
from virnuc_dask.config import load_settings
from virnuc_dask.core.samplesheet import read_samplesheet
from virnuc_dask.dataflow.sequencing_run import run_samples


def test_a_one_sample_run_into_a_sample_folder_of_a_running_sheet_refuses(client, tmp_path, capsys):
    sheet = read_samplesheet(write_sequencing_run(tmp_path / "in"))
    run = tmp_path / "RUN"
    settings = load_settings(
        overrides={"out": str(run), "length": 300, "precision": "fp32", **TINY}
    )
    beside = {}

    def start_another(cluster):  # while the sheet run holds its directories
        argv = ["predict", str(tmp_path / "in" / "single.fq"), "--out", str(run / "single")]
        address = client.scheduler.address
        beside["code"] = main([*argv, *model_flags(300), "--scheduler", address, "-q"])
        beside["err"] = capsys.readouterr().err
        return contextlib.nullcontext()

    result, _ = run_samples(settings, sheet, client=client, progress=start_another)
    assert result.exit_code == 0
    assert beside["code"] == 1
    assert f"{run / 'single'} is in use by another run" in beside["err"]
    assert f"the run into {run}, pid" in beside["err"]
    assert "Traceback" not in beside["err"]
