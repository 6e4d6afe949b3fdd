"""The precision agreement table of a worker's device, for ``virnuc-dask doctor``: each
half precision the device can run against fp32 on the same ORFs, through the
pipeline's embedding path (:func:`~virnuc_dask.worker.agreement.precision_agreement`):
cosine similarity of the embeddings, ORF labels and read calls flipped, and the
seconds each took against fp32's, in the same process one after the other.

The models are random ones in the real formats, of a bench layout (``tiny`` on a CPU
or when quick, else ``650m``: large enough for a GPU's timings to mean
something); the reads are generated coding-like ones. Runs on the worker.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

READS = 60
CHUNK = 500


def table_precisions(device: Any) -> tuple[str, ...]:
    """The precisions compared with fp32 on ``device``."""
    return ("bf16", "bf16-mixed") if device.type == "cpu" else ("bf16", "bf16-mixed", "fp16")


def precision_table(device: Any, *, quick: bool = False) -> dict[str, Any]:
    """Per precision: agreement with fp32 and seconds (see the module's docstring)."""
    from virnuc_dask.core.formats import plan_blocks, read_block
    from virnuc_dask.core.orfs import orfs_from_records
    from virnuc_dask.models.demo import build_classifier, example_reads, write_fasta
    from virnuc_dask.models.registry import EMBEDDING_MODELS
    from virnuc_dask.worker.agreement import precision_agreement

    size = "tiny" if quick or device.type == "cpu" else "650m"
    with tempfile.TemporaryDirectory(prefix="doctor-precision-") as tmp:
        work = Path(tmp)
        sources, width = {}, 0
        for m in EMBEDDING_MODELS:
            path, dim = m.build_random(work, size)
            sources[m.source_setting] = str(path)
            width += dim
        classifier = build_classifier(work / "mlp.pth", input_dim=width)
        fasta = work / "reads.fa"
        write_fasta(fasta, example_reads(READS, min_length=400, max_length=600, random_every=0))
        records = [r for block in plan_blocks([str(fasta)]) for r in read_block(block)]
        orfs = orfs_from_records(records, CHUNK).orfs
        table = precision_agreement(
            **sources,
            classifier=str(classifier),
            nucleotides=[o.nucleotide for o in orfs],
            proteins=[o.protein for o in orfs],
            ids=[o.id for o in orfs],
            precisions=table_precisions(device),
            device=device,
        )
    return {"layout": size, "table": table}


def table_text(report: dict[str, Any]) -> str:
    """``bf16-mixed cos 0.99999 0/84 flipped 1.9x; ...`` (speed: fp32's seconds over its)."""
    parts = []
    for precision, r in report["table"].items():
        if "error" in r:
            parts.append(f"{precision} unsupported")
            continue
        cosine = min(r["esm_cosine_min"], r["dnabert_cosine_min"])
        speed = r["fp32_seconds"] / r["seconds"] if r["seconds"] else float("nan")
        parts.append(
            f"{precision} cos≥{cosine:.5f} {r['labels_flipped']}/{r['orfs']} ORFs "
            f"{r['reads_flipped']}/{r['reads']} reads flipped {speed:.2f}× fp32"
        )
    return f"{report['layout']} layout: " + ", ".join(parts)
