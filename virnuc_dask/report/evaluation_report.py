"""``virnuc-dask report EVALDIR``: an evaluation's metrics, ROC curves and score histograms.

An ``evaluate`` directory holds ``evaluation.json`` and one prediction run per class
(``viral/``, ``other/``). The report shows the metrics table and confusion matrices of
the three levels, the ROC curve of each level, and the distributions of the viral score
of each class at ORF level (score2) and read level (fraction of viral chunks), as one
offline HTML file (inline SVG); ``--png DIR`` writes the figures as PNG too.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from virnuc_dask.errors import ReportError
from virnuc_dask.report.figures import pyplot, svg_text
from virnuc_dask.report.run_report import CSS
from virnuc_dask.train.evaluate import JSON, LEVELS, level_scores
from virnuc_dask.train.metrics import METRICS, roc_curve

COLOURS = {"viral": "#d62728", "other": "#1f3b8c"}
LEVEL_COLOURS = {"orf": "#1b9e77", "chunk": "#d95f02", "read": "#7570b3"}


def is_evaluation(out: str | os.PathLike[str]) -> bool:
    return (Path(out) / JSON).is_file()


def _scores(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """{level: {class: scores}} from the two prediction directories."""
    found: dict[str, dict[str, np.ndarray]] = {level: {} for level in LEVELS}
    for name in ("viral", "other"):
        directory = out / name
        try:
            per_level = level_scores(directory)
        except FileNotFoundError as exc:
            raise ReportError(
                f"{directory}: not a finished prediction ({exc.filename} missing); re-run evaluate"
            ) from None
        for level in LEVELS:
            found[level][name] = np.frombuffer(per_level[level][0], dtype=np.float64)
    return found


def figure_roc(scores: dict[str, dict[str, np.ndarray]], metrics: dict[str, Any]):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for level in LEVELS:
        viral, other = scores[level]["viral"], scores[level]["other"]
        if not len(viral) or not len(other):
            continue
        labels = np.r_[np.ones(len(viral)), np.zeros(len(other))]
        fpr, tpr = roc_curve(labels, np.r_[viral, other])
        auc = metrics[level]["roc_auc"]
        ax.plot(
            fpr,
            tpr,
            color=LEVEL_COLOURS[level],
            drawstyle="steps-post",
            label=f"{level} (AUC {'NA' if auc is None else f'{auc:.4f}'})",
        )
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", frameon=False)
    return fig


def figure_histograms(scores: dict[str, dict[str, np.ndarray]]):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, level, xlabel in (
        (axes[0], "orf", "ORF: P(virus) (score2)"),
        (axes[1], "read", "read: fraction of viral chunks"),
    ):
        bins = np.linspace(0.0, 1.0, 41)
        for name in ("other", "viral"):
            values = scores[level][name]
            ax.hist(
                values,
                bins=bins,
                color=COLOURS[name],
                alpha=0.55,
                label=f"{name} ({len(values):,})",
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def _table(metrics: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        return "NA" if value is None else f"{value:.4f}"

    head = "".join(f"<th>{m}</th>" for m in ("level", "n", *METRICS, "TN", "FP", "FN", "TP"))
    rows = []
    for level in LEVELS:
        m = metrics[level]
        c = m["confusion"]
        rows.append(
            f"<tr><td>{level}</td><td class=n>{m['n']:,}</td>"
            + "".join(f"<td class=n>{cell(m[k])}</td>" for k in METRICS)
            + "".join(f"<td class=n>{c[k]:,}</td>" for k in ("tn", "fp", "fn", "tp"))
            + "</tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_evaluation_report(
    out: str | os.PathLike[str],
    *,
    html_path: str | os.PathLike[str] | None = None,
    png_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the report of the evaluation in ``out``; returns the paths written."""
    out = Path(out)
    document = json.loads((out / JSON).read_text())
    metrics = document["metrics"]
    scores = _scores(out)
    figures = {
        "roc_curves": figure_roc(scores, metrics),
        "score_histograms": figure_histograms(scores),
    }
    pngs = []
    if png_dir:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            path = Path(png_dir) / f"{name}.png"
            fig.savefig(path, dpi=200, bbox_inches="tight")
            pngs.append(path)
    svgs = {name: svg_text(fig) for name, fig in figures.items()}
    e = html.escape
    unscored = metrics["read"]["unscored"]
    title = f"virnuc-dask evaluation: {out.resolve().name}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{e(title)}</h1>
<p class="note">classifier {e(str(document.get("classifier")))} · chunk length
{e(str(document.get("length")))} bp · viral = positive class · reads without a call:
viral {unscored["viral"]}, other {unscored["other"]}</p>
<h2>Metrics</h2>
{_table(metrics)}
<h2>ROC curves</h2>
<figure>{svgs["roc_curves"]}</figure>
<h2>Score distributions</h2>
<figure>{svgs["score_histograms"]}</figure>
</body></html>
"""
    html_path = Path(html_path) if html_path else out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return {"html": html_path, "pngs": pngs}
