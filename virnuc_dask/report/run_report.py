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

The figures are drawn by :mod:`virnuc_dask.report.figures`; the summary's text by
:mod:`virnuc_dask.dataflow.summary_text`.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virnuc_dask.dataflow.summary_text import summary_rows
from virnuc_dask.report.figures import FIGURES, svg_text, write_pngs
from virnuc_dask.report.run_data import CALL_LABELS, CALLS, RunData, load_run

logger = logging.getLogger(__name__)

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


def page_head(title: str) -> str:
    """The start of a report page: its head (inline CSS) and its title as a heading."""
    e = html.escape
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{e(title)}</h1>"""


def render_html(data: RunData, *, title: str) -> str:
    """The whole report as one HTML document (inline CSS and SVG, no scripts)."""
    e = html.escape
    total = sum(data.calls.values()) or 1
    cards = "".join(
        f'<div class="card {c}"><b>{data.calls.get(c, 0):,}</b>{CALL_LABELS[c]} '
        f"({data.calls.get(c, 0) / total:.1%})</div>"
        for c in CALLS
    )
    summary = (
        "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary_rows(data.summary))
        if data.summary
        else '<tr><td class="note">no run_summary.json</td></tr>'
    )
    reads = "".join(
        f"<tr><td>{e(r.id)}</td><td class=n>{r.length:,}</td><td class=n>{r.chunks}</td>"
        f"<td class=n>{r.chunks_with_orf}</td><td class=n>{r.orfs}</td>"
        f"<td class=n>{r.virus_chunks}</td><td class=n>"
        f"{'NA' if r.max_virus_score is None else f'{r.max_virus_score:.4f}'}</td>"
        f"<td>{e(CALL_LABELS.get(r.prediction, r.prediction))}</td></tr>"
        for r in data.reads
    )
    figures = {name: svg_text(make(data)) for name, make in FIGURES.items()}
    return f"""{page_head(title)}
<p class="note">virnuc-dask {e(str(data.summary.get("version", "")))} ·
chunk length {data.length} bp · {e(str(data.summary.get("finished", "")))}</p>
<div class="cards">{cards}</div>
<h2>Calls</h2>
<p class="note">A read is called virus when at least half of its chunks with an ORF are
viral; a chunk is viral when its best virus score is at least its best others score.</p>
<figure>{figures["read_calls"]}</figure>
<h2>Score distribution</h2>
<figure>{figures["score_distribution"]}</figure>
<h2>Read tracks</h2>
<p class="note">Each segment is one ORF over its chunk's span of the read, at the height of
its winning score (max of score1, score2), red when called virus, blue when others.
Grey bars along the bottom are the chunks (staggered, so overlaps show).</p>
<figure>{figures["read_tracks"]}</figure>
<table><tr><th>read</th><th>length</th><th>chunks</th><th>chunks with ORF</th><th>ORFs</th>
<th>virus chunks</th><th>max virus score</th><th>call</th></tr>{reads}</table>
<h2>Run</h2>
<table>{summary}</table>
</body></html>
"""


def write_report(
    out: str | os.PathLike[str],
    *,
    html_path: str | os.PathLike[str] | None = None,
    png_dir: str | os.PathLike[str] | None = None,
    top: int = 10,
    ids: Sequence[str] = (),
    length: int | None = None,
) -> dict[str, Any]:
    """Build the report of the run in ``out``; returns what was written and the data."""
    data = load_run(out, top=top, ids=ids, length=length)
    html_path = Path(html_path) if html_path else Path(out) / "report.html"
    title = f"virnuc-dask report: {Path(out).resolve().name}"
    html_path.write_text(render_html(data, title=title), encoding="utf-8")
    pngs = write_pngs(data, png_dir) if png_dir else []
    return {"html": html_path, "pngs": pngs, "data": data}


# -- command line -------------------------------------------------------------------------
