"""``virnuc-dask report`` on a real run of a reference case: HTML, PNGs, read tracks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster
from helpers import REFERENCE, tiny_settings

from virnuc_dask.cli.main import main
from virnuc_dask.cluster.workers import WORKER_ENV
from virnuc_dask.core.chunking import chunk_spans
from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.dataflow.summary_text import summary_text
from virnuc_dask.report.figures import figure_tracks
from virnuc_dask.report.run_data import COLOURS, load_run

CASE, LENGTH = "mixed", 300


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    settings = tiny_settings(
        [REFERENCE / "dev" / CASE / "input.fa"], out, length=LENGTH, partition_rows=64
    )
    with (
        dask.config.set(WORKER_ENV),
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            resources={"GPU": 1},
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        assert predict(settings, client).exit_code == 0
    return out


def orf_rows(out: Path, read_id: str) -> list[tuple[int, float]]:
    """(chunk number, max score) of every ORF of one read, from prediction_results.txt."""
    rows = []
    for line in (out / "prediction_results.txt").read_text().splitlines()[1:]:
        orf_id, _, s1, s2 = line.split("\t")
        if orf_id.startswith(f"{read_id}_chunk_"):
            rows.append((int(orf_id[len(read_id) + 7 : -2]), max(float(s1), float(s2))))
    return rows


def test_summary_in_the_run_directory(run_dir):
    summary = json.loads((run_dir / "run_summary.json").read_text())
    counts = summary["counts"]
    # reference summary.tsv, mixed @ 300: 80 reads, 310 chunks, 290 ORFs, 67 reads with ORF
    assert (counts["reads"], counts["chunks"], counts["orfs"]) == (80, 310, 290)
    assert counts["reads_no_orf"] == 80 - 67
    assert counts["chunks_virus"] == 146
    assert summary["embedding"]["esm"]["orfs"] == 290
    assert 0 < summary["embedding"]["esm"]["padding_efficiency"] <= 1
    for worker in summary["workers"].values():
        assert worker["orfs"] == 290 and worker["tokens_per_s"]["esm"] > 0
    text = summary_text(summary)
    assert re.search(
        r"^reads\s+80: \d+ viral, \d+ others, 13 without ORF, 0 failed$", text, re.M
    ), text
    assert re.search(r"^time\s+[\d.]+ s total: load models", text, re.M)


def test_report_html_and_pngs(run_dir, tmp_path, capsys):
    import matplotlib.image

    code = main(
        [
            "report",
            str(run_dir),
            "--png",
            str(tmp_path / "png"),
            "--top",
            "4",
            "--html",
            str(tmp_path / "report.html"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"report: {tmp_path / 'report.html'}" in printed
    assert re.search(r"^ORFs\s+290$", printed, re.M)

    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") == 3
    # one file that opens offline: nothing fetched, nothing run
    for needle in ("<script", "<link", "src=", "@import"):
        assert needle not in html
    assert not re.search(r"url\((?!#)|href=\"(?!#)", html)  # only references within the page
    data = load_run(run_dir, top=4)
    assert len(data.reads) == 4
    for read in data.reads:
        assert read.id in html
    # the top reads: called virus, the most chunks with an ORF, then the best score
    rows = [r.split("\t") for r in (run_dir / "read_predictions.tsv").read_text().splitlines()[1:]]
    viral = sorted((r for r in rows if r[7] == "virus"), key=lambda r: (-int(r[3]), -float(r[6])))
    assert [r.id for r in data.reads] == [r[0] for r in viral[:4]]
    assert data.reads[0].chunks_with_orf >= 5

    for name in ("read_calls", "score_distribution", "read_tracks"):
        image = matplotlib.image.imread(tmp_path / "png" / f"{name}.png")
        height, width = image.shape[:2]
        assert width >= 1000 and height >= 300
        ink = (image[..., :3] < 0.9).any(axis=-1).mean()
        assert ink > 0.01, f"{name}.png looks blank"
    tracks = matplotlib.image.imread(tmp_path / "png" / "read_tracks.png")[..., :3]
    red = np.array([int(COLOURS["virus"][i : i + 2], 16) / 255 for i in (1, 3, 5)])
    assert (np.abs(tracks - red).max(axis=-1) < 0.05).sum() > 200  # virus ORF segments drawn


def test_tracks_put_orfs_on_their_chunk_spans(run_dir):
    reads = [
        line.split("\t") for line in (run_dir / "read_predictions.tsv").read_text().splitlines()[1:]
    ]
    long_read = max((r for r in reads if int(r[4]) >= 3), key=lambda r: int(r[2]))
    read_id, length = long_read[0], int(long_read[1])
    data = load_run(run_dir, ids=[read_id])
    fig = figure_tracks(data)
    ax = fig.axes[0]
    spans = chunk_spans(length, LENGTH)
    orf_colours = {COLOURS["virus"], COLOURS["others"]}
    drawn = sorted(
        (tuple(line.get_xdata()), float(line.get_ydata()[0]))
        for line in ax.lines
        if line.get_color() in orf_colours
    )
    expected = sorted((spans[k - 1], score) for k, score in orf_rows(run_dir, read_id))
    assert len(drawn) == len(expected) >= 3
    for (xs, y), (span, score) in zip(drawn, expected, strict=True):
        assert xs == span
        assert y == pytest.approx(score)
    assert ax.get_xlim() == (0, length)
    # the last chunk is the original's short one where the length asks for it
    assert spans[-1][1] == length


def test_unknown_read_id_is_an_error(run_dir, tmp_path, capsys):
    code = main(
        ["report", str(run_dir), "--ids", "no_such_read", "--html", str(tmp_path / "r.html")]
    )
    assert code == 1
    assert "no read with id 'no_such_read'" in capsys.readouterr().err


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "read_predictions.tsv" in err or "run_summary.json" in err


def chromium() -> str | None:
    return next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )


@pytest.mark.skipif(chromium() is None, reason="chromium not installed")
def test_html_renders_in_headless_chromium(run_dir, tmp_path):
    import matplotlib.image

    report = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--html", str(report), "--top", "3"]) == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1280,2600",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (2600, 1280)
    rows_with_ink = (image < 0.85).any(axis=-1).any(axis=1)
    # text at the top and the figures further down were painted
    assert rows_with_ink[:200].any() and rows_with_ink[600:2400].mean() > 0.3
    red = np.array([int(COLOURS["virus"][i : i + 2], 16) / 255 for i in (1, 3, 5)])
    assert (np.abs(image - red).max(axis=-1) < 0.06).sum() > 500
