"""bf16 by casting against bf16-mixed, both against fp32, on the real model layouts.

    python benchmarks/precision_layouts.py [--esm 30x640x20] [--orfs 48] [--json out.json]

The models are the real architectures with the demonstration builders' random
weights (no trained checkpoint is needed): ESM-2 in a real layout (default the
150M model's 30 layers x 640), DNABERT-S in its real 12 x 768 layout, and a random
classifier for their widths; the ORFs come from generated coding-like reads.
``bf16`` casts every weight to bf16 (the residual stream is rounded at every
layer); ``bf16-mixed`` keeps bf16 weights and matrix products but LayerNorm,
softmax and the residual stream in fp32. Printed: cosine similarity of each
model's embeddings (min, mean), ORF labels flipped, largest score difference,
seconds of embedding.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from virnuc_dask.bench.agreement import precision_agreement
from virnuc_dask.bench.kit import read_orfs_of, write_bench_input
from virnuc_dask.models.demo import build_classifier, build_dnabert, build_esm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--esm", default="30x640x20", help="layers x width x heads")
    parser.add_argument(
        "--dnabert", default="12x768x12x3072", help="layers x hidden x heads x intermediate"
    )
    parser.add_argument("--orfs", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers, dim, heads = (int(x) for x in args.esm.split("x"))
    dl, dh, dheads, di = (int(x) for x in args.dnabert.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        esm = build_esm(
            work / f"esm2_t{layers}_{dim}_layout.pt", layers=layers, dim=dim, heads=heads
        )
        dnabert = build_dnabert(
            work / "dnabert", hidden=dh, layers=dl, heads=dheads, intermediate=di
        )
        classifier = build_classifier(work / "mlp.pth", input_dim=dim + dh)
        fasta = write_bench_input(work / "reads.fa", max(8, args.orfs // 2))
        _, orfs = read_orfs_of(str(fasta), 500)
        orfs = orfs[: args.orfs]
        result = precision_agreement(
            esm_model=str(esm),
            dnabert_model=str(dnabert),
            classifier=str(classifier),
            nucleotides=[o.nucleotide for o in orfs],
            proteins=[o.protein for o in orfs],
            precisions=("bf16", "bf16-mixed"),
        )
    result["layouts"] = {"esm": args.esm, "dnabert": args.dnabert, "orfs": len(orfs)}
    text = json.dumps(result, indent=2)
    print(text)  # noqa: T201 - a script's output
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
