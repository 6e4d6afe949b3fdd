"""bf16 by casting against bf16-mixed, both against fp32, on the bench model layouts.

    python benchmarks/precision_layouts.py [--size small --size 650m] [--reads 40]
        [--reference tests/data/reference] [--threads N] [--json out.json]

The models are the bench layouts of ``virnuc-dask bench --size`` (the real
architectures in their real file formats, random weights: no trained checkpoint is
needed) and a random classifier for their widths; the ORFs come from generated
coding-like reads of 400-600 bp, cut into 500 bp chunks. ``bf16`` casts every
weight to bf16 (the residual stream is rounded at every layer); ``bf16-mixed``
keeps bf16 weights and matrix products but LayerNorm, softmax and the residual
stream in fp32. With ``--reference``, the eight reference cases instead (four
inputs at 300 and 500 bp, with the tiny models there, whose classifier was trained:
labels near its decision boundary do flip). Printed per layout and precision: cosine
similarity of each model's embeddings to fp32 (min, mean), ORF labels and read calls
flipped, largest score difference, seconds of embedding (the same process, one after
the other).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch

from virnuc_dask.bench.kit import build_models, read_orfs_of, write_bench_input
from virnuc_dask.models.registry import BENCH_SIZES
from virnuc_dask.worker.agreement import precision_agreement

logger = logging.getLogger("precision_layouts")


def measure(size: str, reads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = build_models(work / "models", size)
        fasta = write_bench_input(work / "reads.fa", reads)
        _, orfs = read_orfs_of(str(fasta), 500)
        result = precision_agreement(
            **paths,
            nucleotides=[o.nucleotide for o in orfs],
            proteins=[o.protein for o in orfs],
            ids=[o.id for o in orfs],
            precisions=("bf16", "bf16-mixed"),
        )
    return {"size": size, "reads": reads, **result}


def read_fasta(path: Path) -> tuple[list[str], list[str]]:
    ids, seqs = [], []
    for block in path.read_text().split(">")[1:]:
        head, _, body = block.partition("\n")
        ids.append(head.split()[0])
        seqs.append(body.replace("\n", ""))
    return ids, seqs


def measure_reference(reference: Path) -> list[dict]:
    models = reference / "models"
    rows = []
    for case in sorted(p for p in (reference / "dev").iterdir() if p.is_dir()):
        for length in sorted(case.glob("L*")):
            ids, nucleotides = read_fasta(length / "input_identified_nucleotide.fa")
            _, proteins = read_fasta(length / "input_identified_protein.faa")
            result = precision_agreement(
                esm_model=str(models / "esm2_t2_64_tiny.pt"),
                dnabert_model=str(models / "dnabert_s_tiny"),
                classifier=str(models / "mlp_tiny.pth"),
                nucleotides=nucleotides,
                proteins=proteins,
                ids=ids,
                precisions=("bf16", "bf16-mixed"),
            )
            rows.append({"size": f"reference {case.name} {length.name}", **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", action="append", choices=BENCH_SIZES)
    parser.add_argument("--reads", type=int, default=40)
    parser.add_argument("--reference", type=Path, help="the reference folder (tiny models)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference:
        results = measure_reference(args.reference)
    else:
        results = [measure(size, args.reads) for size in args.size or ["small"]]
    for row in results:
        size = row["size"]
        for precision in ("bf16", "bf16-mixed"):
            r = row[precision]
            logger.info(
                "%s %s: ESM-2 cosine min %.6f mean %.6f; DNABERT-S min %.6f mean %.6f; "
                "%d/%d ORF labels, %d/%d reads flipped; max score diff %.4f; %.1f s",
                size,
                precision,
                r["esm_cosine_min"],
                r["esm_cosine_mean"],
                r["dnabert_cosine_min"],
                r["dnabert_cosine_mean"],
                r["labels_flipped"],
                r["orfs"],
                r["reads_flipped"],
                r["reads"],
                r["max_score_diff"],
                r["seconds"],
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
