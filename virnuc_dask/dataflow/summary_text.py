"""The end-of-run summary (``run_summary.json``) as text, for the terminal, the log and
the report.

>>> print(summary_text({"status": "complete", "counts": {"reads": 3, "reads_virus": 1}}))
... # doctest: +NORMALIZE_WHITESPACE
status complete
reads 3: 1 viral, 2 others, 0 without ORF, 0 failed
"""

from __future__ import annotations

from typing import Any

from virnuc_dask.formatting import clock, compact
from virnuc_dask.models.registry import MODEL_NAMES

STAGE_NAMES = {
    "load_models": "load models",
    "read_translate": "read + translate",
    "embed": "embed",
    "classify": "classify",
    "write": "write",
}


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
        rows.append(
            (
                "reads",
                f"{reads:,}: {c.get('reads_virus', 0):,} viral, {others:,} "
                f"others, {c.get('reads_no_orf', 0):,} without ORF, "
                f"{failed:,} failed",
            )
        )
    if "chunks" in c:
        rows.append(("chunks", f"{c['chunks']:,} ({c.get('chunks_virus', 0):,} viral)"))
    if "orfs" in c:
        failed = f" ({c['orfs_failed']:,} could not be embedded)" if c.get("orfs_failed") else ""
        rows.append(("ORFs", f"{c['orfs']:,}{failed}"))
    p = summary.get("partitions")
    if p:
        rows.append(
            (
                "partitions",
                f"{p.get('total', 0)} ({p.get('computed', 0)} computed, "
                f"{p.get('reused', 0)} reused)",
            )
        )
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
            text = f"{stage['orfs']:,} ORFs"
            if stage.get("embedded", stage["orfs"]) != stage["orfs"]:
                text += f" ({stage['embedded']:,} embedded, the others copies)"
            text += (
                f", {stage.get('real_tokens', 0):,} tokens, "
                f"{_rate(stage.get('tokens_per_s'))} tokens/s of worker time"
            )
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
        text += "".join(f", {MODEL_NAMES.get(k, k)} {_rate(v)} tok/s" for k, v in tps.items() if v)
        rows.append((f"worker {address}", text))
    for failed in summary.get("workers_failed", []):
        rows.append(("worker left", str(failed.get("error"))))
    return rows


def summary_text(summary: dict[str, Any]) -> str:
    """The run summary as aligned plain text, for the terminal and the log."""
    rows = summary_rows(summary)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {text}" for label, text in rows)
