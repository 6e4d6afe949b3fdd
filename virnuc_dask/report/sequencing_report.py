"""``virnuc-dask report RUN/`` for a sequencing run: a page per sample and an overview.

Each sample's folder gets the report a one-sample run gets (``RUN/<sample>/report.html``,
:func:`virnuc_dask.report.run_report.write_report`); ``RUN/report.html`` shows the viral
fraction of every sample as a bar chart and the table of ``samples.tsv``, each sample
linked to its page.  One offline HTML file each (inline SVG, no scripts).
"""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path
from typing import Any

from virnuc_dask.errors import ReportError
from virnuc_dask.report.run_report import page_head, write_report
from virnuc_dask.rundir import SAMPLES, SUMMARY

PAGE = "report.html"


def is_sequencing_run(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` is the directory of a ``predict --samplesheet`` run."""
    return (Path(out) / SAMPLES).is_file()


def read_samples(out: str | os.PathLike[str]) -> list[dict[str, str]]:
    path = Path(out) / SAMPLES
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read: {exc.strerror}") from None


def fraction_chart(rows: list[dict[str, str]]) -> str:
    """The viral fraction of each finished sample as horizontal bars, as SVG text."""
    from matplotlib.figure import Figure

    shown = [r for r in rows if r["viral_fraction"] not in ("", "NA")]
    fig = Figure(figsize=(7.5, 0.9 + 0.28 * max(len(shown), 1)))
    ax = fig.subplots()
    names = [r["sample"] for r in shown][::-1]
    values = [100 * float(r["viral_fraction"]) for r in shown][::-1]
    bars = ax.barh(names, values, color="#d62728")
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max([*values, 1.0]) * 1.15)
    ax.set_xlabel("reads predicted viral (%)")
    ax.spines[["top", "right"]].set_visible(False)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def render_overview(rows: list[dict[str, str]], summary: dict[str, Any], *, title: str) -> str:
    e = html.escape
    columns = [c for c in (rows[0] if rows else {}) if c != "error"]
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row[c]
            if c == "sample" and row["status"] != "failed":
                cells.append(f'<td><a href="{e(value)}/{PAGE}">{e(value)}</a></td>')
            elif c == "viral_fraction" and value not in ("", "NA"):
                cells.append(f"<td class=n>{100 * float(value):.2f}%</td>")
            else:
                cells.append(f"<td{' class=n' if value[:1].isdigit() else ''}>{e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    failed = "".join(
        f"<li><b>{e(r['sample'])}</b>: {e(r['error'])}</li>"
        for r in rows
        if r["status"] == "failed"
    )
    return f"""{page_head(title)}
<p class="note">virnuc-dask {e(str(summary.get("version", "")))} · {len(rows)} samples ·
samplesheet {e(str(summary.get("samplesheet", "")))}</p>
<h2>Viral fraction per sample</h2>
<figure>{fraction_chart(rows)}</figure>
{f"<h2>Samples that failed</h2><ul>{failed}</ul>" if failed else ""}
<h2>Samples</h2>
<table><tr>{head}</tr>{"".join(body)}</table>
</body></html>
"""


def write_run_report(out: str | os.PathLike[str], *, top: int = 10) -> dict[str, Any]:
    """Write every finished sample's page and the run's overview; what was written."""
    import json

    out = Path(out)
    rows = read_samples(out)
    pages = []
    for row in rows:
        if row["status"] != "failed" and (out / row["sample"] / SUMMARY).is_file():
            pages.append(write_report(out / row["sample"], top=top)["html"])
    summary_path = out / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    overview = out / PAGE
    title = f"virnuc-dask run: {out.resolve().name}"
    overview.write_text(render_overview(rows, summary, title=title), encoding="utf-8")
    return {"html": overview, "pages": pages}
