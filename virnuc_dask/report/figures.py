"""The report's figures, drawn with matplotlib: calls per read, score distributions and
read tracks (every ORF over its chunk's span of the read, at its winning score)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from virnuc_dask.core.chunking import chunk_spans
from virnuc_dask.report.run_data import BINS, CALL_LABELS, CALLS, COLOURS, RunData


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # read ids are shown as they are: no $...$ mathtext
    plt.rcParams.update(
        {
            "svg.fonttype": "path",
            "text.parse_math": False,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 100,
        }
    )
    return plt


def figure_calls(data: RunData):
    """Horizontal bars: reads per call, and chunks per call."""
    plt = pyplot()
    fig, (ax_reads, ax_chunks) = plt.subplots(
        1, 2, figsize=(10, 2.6), gridspec_kw={"width_ratios": [2, 1]}
    )
    names = [c for c in CALLS if data.calls.get(c)] or ["virus", "others"]
    values = [data.calls.get(c, 0) for c in names]
    ax_reads.barh([CALL_LABELS[c] for c in names], values, color=[COLOURS[c] for c in names])
    ax_reads.invert_yaxis()
    ax_reads.set_title("reads", loc="left")
    total = sum(values) or 1
    for y, v in enumerate(values):
        ax_reads.text(v, y, f" {v:,} ({v / total:.1%})", va="center", fontsize=9)
    ax_reads.set_xlim(0, max(values + [1]) * 1.35)
    chunk_names = ["virus", "others"]
    chunk_values = [data.chunk_calls.get(c, 0) for c in chunk_names]
    ax_chunks.barh(chunk_names, chunk_values, color=[COLOURS[c] for c in chunk_names])
    ax_chunks.invert_yaxis()
    ax_chunks.set_title("chunks with an ORF", loc="left")
    for y, v in enumerate(chunk_values):
        ax_chunks.text(v, y, f" {v:,}", va="center", fontsize=9)
    ax_chunks.set_xlim(0, max(chunk_values + [1]) * 1.35)
    fig.tight_layout()
    return fig


def figure_scores(data: RunData):
    """Histograms of P(virus): per ORF (stacked by call) and per read (best ORF)."""
    plt = pyplot()
    fig, (ax_orf, ax_read) = plt.subplots(1, 2, figsize=(10, 3.2))
    width = np.diff(BINS)
    bottom = np.zeros(len(BINS) - 1)
    for call in ("others", "virus"):
        counts = data.orf_hist.get(call, np.zeros(len(BINS) - 1))
        ax_orf.bar(
            BINS[:-1],
            counts,
            width=width,
            align="edge",
            bottom=bottom,
            color=COLOURS[call],
            label=call,
        )
        bottom = bottom + counts
    ax_orf.set_title("ORFs", loc="left")
    ax_orf.set_xlabel("P(virus) (score2)")
    ax_orf.set_ylabel("ORFs")
    ax_orf.legend(frameon=False)
    ax_read.bar(BINS[:-1], data.read_hist, width=width, align="edge", color="#555555")
    ax_read.axvline(0.5, color="#999999", linewidth=0.8, linestyle="--")
    ax_read.set_title("reads: best ORF", loc="left")
    ax_read.set_xlabel("highest P(virus) of the read (max_virus_score)")
    ax_read.set_ylabel("reads")
    for ax in (ax_orf, ax_read):
        ax.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def figure_tracks(data: RunData):
    """One panel per selected read: ORF segments over their chunk spans (drew_fig.py's plot)."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    n = max(1, len(data.reads))
    fig, axes = plt.subplots(n, 1, figsize=(12, 1.35 + 1.25 * n), squeeze=False)
    for ax, read in zip(axes[:, 0], data.reads, strict=False):
        spans = chunk_spans(read.length, data.length) if read.length > 0 else []
        for k, (start, stop) in enumerate(spans):  # staggered, so overlaps show
            ax.plot(
                [start, stop],
                [0.475 + 0.025 * (k % 2)] * 2,
                color="#bbbbbb",
                linewidth=4,
                solid_capstyle="butt",
            )
        for orf in data.orfs.get(read.id, []):
            if not 1 <= orf.chunk <= len(spans):
                continue
            start, stop = spans[orf.chunk - 1]
            ax.plot(
                [start, stop],
                [max(orf.others, orf.virus)] * 2,
                color=COLOURS.get(orf.call, "#000000"),
                linewidth=2.2,
                solid_capstyle="butt",
            )
        ax.set_xlim(0, max(read.length, 1))
        ax.set_ylim(0.45, 1.05)
        ax.set_ylabel("score")
        chunks = f"{read.chunks} chunk" + ("s" if read.chunks != 1 else "")
        ax.set_title(
            f"{read.id}  ·  {read.length:,} bp  ·  {chunks}  ·  "
            f"call: {CALL_LABELS.get(read.prediction, read.prediction)}",
            loc="left",
            fontsize=10,
            fontweight="bold",
        )
        if not data.orfs.get(read.id):
            ax.text(0.5, 0.5, "no ORF", transform=ax.transAxes, ha="center", color="#777777")
    if not data.reads:
        axes[0, 0].text(
            0.5, 0.5, "no read with an ORF", transform=axes[0, 0].transAxes, ha="center"
        )
    axes[-1, 0].set_xlabel("position in read (bp)")
    handles = [
        Line2D([], [], color=COLOURS[c], linewidth=2.2, label=f"ORF called {c}")
        for c in ("virus", "others")
    ]
    handles.append(Line2D([], [], color="#bbbbbb", linewidth=4, label="chunks"))
    fig.legend(handles=handles, loc="upper right", ncol=3, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.35 + 1.25 * n)))
    return fig


FIGURES = {
    "read_calls": figure_calls,
    "score_distribution": figure_scores,
    "read_tracks": figure_tracks,
}


def svg_text(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def write_pngs(data: RunData, directory: str | os.PathLike[str], *, dpi: int = 200) -> list[Path]:
    """Each figure as ``DIR/<name>.png``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in FIGURES.items():
        fig = make(data)
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
        pyplot().close(fig)
        paths.append(path)
    return paths
