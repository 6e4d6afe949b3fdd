"""``virnuc-dask report OUTDIR``: a run's results as one offline HTML file and PNG figures.

The report reads the files ``predict`` wrote (``run_summary.json``,
``read_predictions.tsv``, ``prediction_results.txt``), streaming, so its memory
does not grow with the run, and draws with matplotlib:

- calls per read (virus / others / no ORF / failed);
- the score distributions: P(virus) of every ORF, and each read's best P(virus);
- read tracks, the plot VirNucPro's ``drew_fig.py`` draws: every ORF as a segment
  over its chunk's span of the read, at the height of its winning score,
  coloured by its call; the spans come from the run's chunk length and each
  read's length (``chunking.chunk_spans``), so overlapping and short last chunks
  sit where they really are.

Figures are inlined in the HTML as SVG (no scripts, no network); ``--png DIR``
writes the same figures as PNG for papers.

>>> print(summary_text({"status": "complete", "counts": {"reads": 3, "reads_virus": 1}}))
... # doctest: +NORMALIZE_WHITESPACE
status complete
reads 3: 1 viral, 2 others, 0 without ORF, 0 failed
"""

from __future__ import annotations

import dataclasses
import heapq
import html
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from virnuc_dask.core.chunking import chunk_spans
from virnuc_dask.errors import ReportError
from virnuc_dask.formatting import clock, compact
from virnuc_dask.rundir import HIGHEST, PREDICTIONS, READS, SUMMARY

logger = logging.getLogger(__name__)

CALLS = ("virus", "others", "no_orf", "failed")
CALL_LABELS = {"virus": "virus", "others": "others", "no_orf": "no ORF", "failed": "failed"}
COLOURS = {"virus": "#d62728", "others": "#1f3b8c", "no_orf": "#9e9e9e", "failed": "#ff9f1c"}
BINS = np.linspace(0.0, 1.0, 51)
STAGE_NAMES = {"load_models": "load models", "read_translate": "read + translate",
               "embed": "embed", "classify": "classify", "write": "write"}
MODEL_NAMES = {"dnabert": "DNABERT-S", "esm": "ESM-2"}


# -- the end-of-run summary ---------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.1f} s" if value < 60 else clock(value)


def _rate(value: float | None) -> str:
    return compact(value, decimals_below=100) if value else "?"


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows of a ``run_summary.json``; keys it lacks are left out."""
    rows: list[tuple[str, str]] = [("status", str(summary.get("status", "?")))]
    c = summary.get("counts", {})
    if c:
        reads = c.get("reads", 0)
        # "failed" counts rows of failed_records.tsv (ORFs too); reads_failed the reads.
        failed = c.get("reads_failed", c.get("failed", 0))
        others = reads - c.get("reads_virus", 0) - c.get("reads_no_orf", 0) - failed
        rows.append(("reads", f"{reads:,}: {c.get('reads_virus', 0):,} viral, {others:,} "
                     f"others, {c.get('reads_no_orf', 0):,} without ORF, "
                     f"{failed:,} failed"))
    if "chunks" in c:
        rows.append(("chunks", f"{c['chunks']:,} ({c.get('chunks_virus', 0):,} viral)"))
    if "orfs" in c:
        failed = f" ({c['orfs_failed']:,} could not be embedded)" if c.get("orfs_failed") else ""
        rows.append(("ORFs", f"{c['orfs']:,}{failed}"))
    p = summary.get("partitions")
    if p:
        rows.append(("partitions", f"{p.get('total', 0)} ({p.get('computed', 0)} computed, "
                     f"{p.get('reused', 0)} reused)"))
    if "inputs" in summary:
        rows.append(("inputs", ", ".join(summary["inputs"])))
    if "length" in summary:
        rows.append(("chunk length", f"{summary['length']} bp"))
    models = summary.get("models", {})
    for key, name in (*MODEL_NAMES.items(), ("classifier", "classifier")):
        if key in models:
            m = models[key]
            dim = m.get("dim", m.get("input_dim"))
            rows.append((name, f"{m.get('source')}" + (f" ({dim}-d)" if dim else "")))
    if "precision" in summary:
        rows.append(("precision", f"{summary['precision']} on {summary.get('device', '?')}"))
    cl = summary.get("cluster")
    if cl:
        text = f"{cl.get('workers', '?')} worker(s) on {cl.get('host', '?')}"
        threads = cl.get("threads_per_worker")
        if threads:
            text += f", {sum(t or 0 for t in threads.values())} threads"
        if cl.get("scheduler"):
            text += f"; scheduler {cl['scheduler']}"
        rows.append(("cluster", text))
    t = summary.get("timings_s")
    if t:
        parts = [f"{STAGE_NAMES.get(k, k)} {_seconds(v)}" for k, v in t.items() if k != "total"]
        rows.append(("time", f"{_seconds(t.get('total'))} total: " + ", ".join(parts)))
    if summary.get("reads_per_s"):
        rows.append(("throughput", f"{_rate(summary['reads_per_s'])} reads/s end to end"))
    for key, stage in summary.get("embedding", {}).items():
        if stage.get("orfs"):
            text = (f"{stage['orfs']:,} ORFs, {stage.get('real_tokens', 0):,} tokens, "
                    f"{_rate(stage.get('tokens_per_s'))} tokens/s of worker time")
            if stage.get("padding_efficiency"):
                text += f", padding efficiency {stage['padding_efficiency']:.2f}"
            if stage.get("oom_splits"):
                text += f", {stage['oom_splits']} out-of-memory splits"
            rows.append((MODEL_NAMES.get(key, key), text))
    for address, w in summary.get("workers", {}).items():
        text = f"{w.get('partitions', 0)} partitions, {w.get('orfs', 0):,} ORFs"
        if w.get("orfs_per_s"):
            text += f", {_rate(w['orfs_per_s'])} ORFs/s"
        tps = w.get("tokens_per_s") or {}
        text += "".join(f", {MODEL_NAMES.get(k, k)} {_rate(v)} tok/s"
                        for k, v in tps.items() if v)
        rows.append((f"worker {address}", text))
    return rows


def summary_text(summary: dict[str, Any]) -> str:
    """The run summary as aligned plain text, for the terminal and the log."""
    rows = summary_rows(summary)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {text}" for label, text in rows)


# -- reading a run ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadRow:
    """One row of ``read_predictions.tsv``."""

    id: str
    length: int
    chunks: int
    chunks_with_orf: int
    orfs: int
    virus_chunks: int
    max_virus_score: float | None
    prediction: str


@dataclasses.dataclass(frozen=True)
class OrfScore:
    """One ORF of a plotted read: its chunk number, frame, call and scores."""

    chunk: int
    frame: str
    call: str
    others: float
    virus: float


@dataclasses.dataclass
class RunData:
    """What the report shows: counts, histograms, and the selected reads with their ORFs."""

    summary: dict[str, Any]
    length: int
    calls: dict[str, int]
    chunk_calls: dict[str, int]
    orf_hist: dict[str, np.ndarray]
    read_hist: np.ndarray
    reads: list[ReadRow]
    orfs: dict[str, list[OrfScore]]


def _open_lines(path: Path, header: str) -> Iterable[list[str]]:
    if not path.is_file():
        raise ReportError(f"{path}: not found; is {path.parent} the --out of a finished "
                          "virnuc-dask predict run?")
    with open(path) as fh:
        first = fh.readline().rstrip("\n")
        if first != header:
            raise ReportError(f"{path}: line 1: expected the header {header!r}, found {first!r}")
        for n, line in enumerate(fh, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != header.count("\t") + 1:
                raise ReportError(f"{path}: line {n}: expected {header.count(chr(9)) + 1} "
                                  f"tab-separated fields, found {len(fields)}")
            yield fields


def _read_row(f: list[str]) -> ReadRow:
    return ReadRow(f[0], int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5]),
                   None if f[6] == "NA" else float(f[6]), f[7])


def _split_orf_id(orf_id: str) -> tuple[str, int, str] | None:
    """``read_chunk_3F2`` -> ``("read", 3, "F2")``; None if the id is not of that form."""
    read, sep, rest = orf_id.rpartition("_chunk_")
    if not sep or len(rest) < 3 or not rest[:-2].isdigit():
        return None
    return read, int(rest[:-2]), rest[-2:]


def load_run(out: str | os.PathLike[str], *, top: int = 10, ids: Sequence[str] = (),
             length: int | None = None) -> RunData:
    """Stream the result files of ``out``; select ``ids``, else the ``top`` reads.

    The top reads: reads called virus before the others, then the most chunks with
    an ORF (the longest tracks), then the highest best P(virus); reads without ORF never.
    """
    out = Path(out)
    summary: dict[str, Any] = {}
    if (out / SUMMARY).is_file():
        try:
            summary = json.loads((out / SUMMARY).read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{out / SUMMARY}: not valid JSON: {exc}") from None
    length = length or summary.get("length")
    if not length:
        raise ReportError(f"{out}: no {SUMMARY} with the chunk length; pass --length")
    calls = dict.fromkeys(CALLS, 0)
    read_hist = np.zeros(len(BINS) - 1, dtype=np.int64)
    wanted = set(ids)
    chosen: dict[str, ReadRow] = {}
    heap: list[tuple[bool, int, float, int, ReadRow]] = []
    scores: list[float] = []
    for n, fields in enumerate(_open_lines(out / READS, _header(READS))):
        row = _read_row(fields)
        calls[row.prediction] = calls.get(row.prediction, 0) + 1
        if row.max_virus_score is not None:
            scores.append(row.max_virus_score)
            if len(scores) >= 1 << 16:
                read_hist += np.histogram(scores, BINS)[0]
                scores.clear()
        if wanted:
            if row.id in wanted:
                chosen[row.id] = row
        elif row.max_virus_score is not None and top > 0:
            item = (row.prediction == "virus", row.chunks_with_orf, row.max_virus_score, -n,
                    row)
            if len(heap) < top:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)
    read_hist += np.histogram(scores, BINS)[0]
    if wanted:
        missing = [i for i in ids if i not in chosen]
        if missing:
            raise ReportError(f"{out / READS}: no read with id {', '.join(map(repr, missing))}")
        reads = [chosen[i] for i in dict.fromkeys(ids)]
    else:
        reads = [item[-1] for item in sorted(heap, reverse=True)]
    selected = {r.id for r in reads}
    orfs: dict[str, list[OrfScore]] = {r.id: [] for r in reads}
    orf_hist = {"virus": np.zeros(len(BINS) - 1, np.int64),
                "others": np.zeros(len(BINS) - 1, np.int64)}
    pending: dict[str, list[float]] = {"virus": [], "others": []}
    chunk_calls = {"virus": 0, "others": 0}
    for fields in _open_lines(out / PREDICTIONS, _header(PREDICTIONS)):
        orf_id, call, s1, s2 = fields
        bucket = pending.setdefault(call, [])
        bucket.append(float(s2))
        if len(bucket) >= 1 << 16:
            orf_hist.setdefault(call, np.zeros(len(BINS) - 1, np.int64))
            orf_hist[call] += np.histogram(bucket, BINS)[0]
            bucket.clear()
        parts = _split_orf_id(orf_id)
        if parts is not None and parts[0] in selected:
            orfs[parts[0]].append(OrfScore(parts[1], parts[2], call, float(s1), float(s2)))
    for call, bucket in pending.items():
        orf_hist.setdefault(call, np.zeros(len(BINS) - 1, np.int64))
        orf_hist[call] += np.histogram(bucket, BINS)[0]
    highest = out / HIGHEST
    if highest.is_file():
        for fields in _open_lines(highest, "Modified_ID\tIs_Virus"):
            chunk_calls["virus" if fields[1] == "True" else "others"] += 1
    return RunData(summary, int(length), calls, chunk_calls, orf_hist, read_hist, reads, orfs)


def _header(name: str) -> str:
    from virnuc_dask.dataflow.outputs import HEADERS

    return HEADERS[name].rstrip("\n")


# -- figures ------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # read ids are shown as they are: no $...$ mathtext
    plt.rcParams.update({"svg.fonttype": "path", "text.parse_math": False,
                         "axes.spines.top": False,
                         "axes.spines.right": False, "figure.dpi": 100})
    return plt


def figure_calls(data: RunData):
    """Horizontal bars: reads per call, and chunks per call."""
    plt = _pyplot()
    fig, (ax_reads, ax_chunks) = plt.subplots(1, 2, figsize=(10, 2.6),
                                              gridspec_kw={"width_ratios": [2, 1]})
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
    plt = _pyplot()
    fig, (ax_orf, ax_read) = plt.subplots(1, 2, figsize=(10, 3.2))
    width = np.diff(BINS)
    bottom = np.zeros(len(BINS) - 1)
    for call in ("others", "virus"):
        counts = data.orf_hist.get(call, np.zeros(len(BINS) - 1))
        ax_orf.bar(BINS[:-1], counts, width=width, align="edge", bottom=bottom,
                   color=COLOURS[call], label=call)
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
    plt = _pyplot()
    from matplotlib.lines import Line2D

    n = max(1, len(data.reads))
    fig, axes = plt.subplots(n, 1, figsize=(12, 1.35 + 1.25 * n), squeeze=False)
    for ax, read in zip(axes[:, 0], data.reads, strict=False):
        spans = chunk_spans(read.length, data.length) if read.length > 0 else []
        for k, (start, stop) in enumerate(spans):  # staggered, so overlaps show
            ax.plot([start, stop], [0.475 + 0.025 * (k % 2)] * 2, color="#bbbbbb",
                    linewidth=4, solid_capstyle="butt")
        for orf in data.orfs.get(read.id, []):
            if not 1 <= orf.chunk <= len(spans):
                continue
            start, stop = spans[orf.chunk - 1]
            ax.plot([start, stop], [max(orf.others, orf.virus)] * 2,
                    color=COLOURS.get(orf.call, "#000000"), linewidth=2.2,
                    solid_capstyle="butt")
        ax.set_xlim(0, max(read.length, 1))
        ax.set_ylim(0.45, 1.05)
        ax.set_ylabel("score")
        chunks = f"{read.chunks} chunk" + ("s" if read.chunks != 1 else "")
        ax.set_title(f"{read.id}  ·  {read.length:,} bp  ·  {chunks}  ·  "
                     f"call: {CALL_LABELS.get(read.prediction, read.prediction)}",
                     loc="left", fontsize=10, fontweight="bold")
        if not data.orfs.get(read.id):
            ax.text(0.5, 0.5, "no ORF", transform=ax.transAxes, ha="center", color="#777777")
    if not data.reads:
        axes[0, 0].text(0.5, 0.5, "no read with an ORF", transform=axes[0, 0].transAxes,
                        ha="center")
    axes[-1, 0].set_xlabel("position in read (bp)")
    handles = [Line2D([], [], color=COLOURS[c], linewidth=2.2, label=f"ORF called {c}")
               for c in ("virus", "others")]
    handles.append(Line2D([], [], color="#bbbbbb", linewidth=4, label="chunks"))
    fig.legend(handles=handles, loc="upper right", ncol=3, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.35 + 1.25 * n)))
    return fig


FIGURES = {"read_calls": figure_calls, "score_distribution": figure_scores,
           "read_tracks": figure_tracks}


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def write_pngs(data: RunData, directory: str | os.PathLike[str], *, dpi: int = 200
               ) -> list[Path]:
    """Each figure as ``DIR/<name>.png``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in FIGURES.items():
        fig = make(data)
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
        _pyplot().close(fig)
        paths.append(path)
    return paths


# -- HTML ---------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1180px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
.note { color: #666; } table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.25em 0.8em; text-align: left; border-bottom: 1px solid #eee;
         vertical-align: top; }
th { background: #f5f5f5; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1.1em; min-width: 8em; }
.card b { display: block; font-size: 1.5em; } .virus b { color: #d62728; }
.others b { color: #1f3b8c; } figure { margin: 0.5em 0; } svg { max-width: 100%; height: auto; }
"""


def render_html(data: RunData, *, title: str) -> str:
    """The whole report as one HTML document (inline CSS and SVG, no scripts)."""
    e = html.escape
    total = sum(data.calls.values()) or 1
    cards = "".join(
        f'<div class="card {c}"><b>{data.calls.get(c, 0):,}</b>{CALL_LABELS[c]} '
        f'({data.calls.get(c, 0) / total:.1%})</div>' for c in CALLS)
    summary = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>"
                      for k, v in summary_rows(data.summary)) if data.summary else \
        '<tr><td class="note">no run_summary.json</td></tr>'
    reads = "".join(
        f"<tr><td>{e(r.id)}</td><td class=n>{r.length:,}</td><td class=n>{r.chunks}</td>"
        f"<td class=n>{r.chunks_with_orf}</td><td class=n>{r.orfs}</td>"
        f"<td class=n>{r.virus_chunks}</td><td class=n>"
        f"{'NA' if r.max_virus_score is None else f'{r.max_virus_score:.4f}'}</td>"
        f"<td>{e(CALL_LABELS.get(r.prediction, r.prediction))}</td></tr>" for r in data.reads)
    figures = {name: _svg(make(data)) for name, make in FIGURES.items()}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{e(title)}</h1>
<p class="note">virnuc-dask {e(str(data.summary.get('version', '')))} ·
chunk length {data.length} bp · {e(str(data.summary.get('finished', '')))}</p>
<div class="cards">{cards}</div>
<h2>Calls</h2>
<p class="note">A read is called virus when at least half of its chunks with an ORF are
viral; a chunk is viral when its best virus score is at least its best others score.</p>
<figure>{figures['read_calls']}</figure>
<h2>Score distribution</h2>
<figure>{figures['score_distribution']}</figure>
<h2>Read tracks</h2>
<p class="note">Each segment is one ORF over its chunk's span of the read, at the height of
its winning score (max of score1, score2), red when called virus, blue when others.
Grey bars along the bottom are the chunks (staggered, so overlaps show).</p>
<figure>{figures['read_tracks']}</figure>
<table><tr><th>read</th><th>length</th><th>chunks</th><th>chunks with ORF</th><th>ORFs</th>
<th>virus chunks</th><th>max virus score</th><th>call</th></tr>{reads}</table>
<h2>Run</h2>
<table>{summary}</table>
</body></html>
"""


def write_report(out: str | os.PathLike[str], *, html_path: str | os.PathLike[str] | None = None,
                 png_dir: str | os.PathLike[str] | None = None, top: int = 10,
                 ids: Sequence[str] = (), length: int | None = None) -> dict[str, Any]:
    """Build the report of the run in ``out``; returns what was written and the data."""
    data = load_run(out, top=top, ids=ids, length=length)
    html_path = Path(html_path) if html_path else Path(out) / "report.html"
    title = f"virnuc-dask report: {Path(out).resolve().name}"
    html_path.write_text(render_html(data, title=title), encoding="utf-8")
    pngs = write_pngs(data, png_dir) if png_dir else []
    return {"html": html_path, "pngs": pngs, "data": data}


# -- command line -------------------------------------------------------------------------
