"""Real samples through the pipeline: FASTQ inputs give the FASTA results; identical
inputs are embedded once and the results agree with a run that embeds every copy."""

from __future__ import annotations

import collections
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import (
    CASES,
    TINY,
    assert_matches_reference,
    read_fasta_pairs,
    tiny_settings,
    write_duplicated_reads,
)

from virnuc_dask.dataflow.pipeline import predict
from virnuc_dask.dataflow.store import read_rows

RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "read_predictions.tsv")


def fasta_to_fastq(src: Path, dest: Path, *, compressed: bool = False) -> Path:
    """The records of ``src`` as four-line FASTQ (full titles kept, qualities invented)."""
    titles = [line[1:].rstrip("\r\n") for line in src.open() if line.startswith(">")]
    pairs = read_fasta_pairs(src)
    text = "".join(
        f"@{title}\n{seq}\n+\n{'?' * len(seq)}\n"
        for title, (_, seq) in zip(titles, pairs, strict=True)
    )
    dest.write_bytes(gzip.compress(text.encode()) if compressed else text.encode())
    return dest


def _run(client, inputs, out: Path, length: int, **extra):
    settings = tiny_settings(inputs, out, length=length, blocksize=4096, partition_rows=37, **extra)
    return predict(settings, client)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("compressed", [False, True])
def test_fastq_gives_the_original_results(client, reference, tmp_path, case, compressed):
    src = reference / "dev" / case / "input.fa"
    fq = fasta_to_fastq(
        src, tmp_path / ("reads.dat" if compressed else "reads.fq"), compressed=compressed
    )
    length = 500 if compressed else 300
    result = _run(client, [fq], tmp_path / "out", length)
    assert result.exit_code == 0
    assert_matches_reference(tmp_path / "out", reference / "dev" / case / f"L{length}")


def test_mixed_formats_give_the_fasta_run(client, reference, tmp_path):
    src = reference / "dev" / "mixed" / "input.fa"
    lines = src.read_text().splitlines(keepends=True)
    heads = [i for i, line in enumerate(lines) if line.startswith(">")]
    cut = heads[len(heads) // 2]
    first, second = tmp_path / "first.fa", tmp_path / "second.fa"
    first.write_text("".join(lines[:cut]))
    second.write_text("".join(lines[cut:]))
    fasta_to_fastq(first, tmp_path / "first.fq.gz", compressed=True)
    _run(client, [src], tmp_path / "fasta", 300)
    result = _run(client, [tmp_path / "first.fq.gz", second], tmp_path / "mixed", 300)
    assert result.exit_code == 0
    for name in RESULTS:
        assert (tmp_path / "mixed" / name).read_bytes() == (
            tmp_path / "fasta" / name
        ).read_bytes(), name


def _predictions(out: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    rows = [
        line.split("\t") for line in (out / "prediction_results.txt").read_text().splitlines()[1:]
    ]
    return [(r[0], r[1]) for r in rows], np.array([[float(r[2]), float(r[3])] for r in rows])


def _read_calls(out: Path) -> list[list[str]]:
    # All columns but max_virus_score (a score: float rounding may differ).
    return [
        line.split("\t")[:6] + line.split("\t")[7:]
        for line in (out / "read_predictions.tsv").read_text().splitlines()
    ]


def test_dedup_agrees_with_no_dedup_and_embeds_each_input_once(client, tmp_path):
    reads = write_duplicated_reads(tmp_path / "dup.fa", 240, share=0.3)
    plain = _run(client, [reads], tmp_path / "all", 500, dedup=False, keep_embeddings=True)
    once = _run(client, [reads], tmp_path / "once", 500, keep_embeddings=True)
    lean = _run(client, [reads], tmp_path / "lean", 500)  # scores only: copies read theirs
    assert plain.exit_code == once.exit_code == lean.exit_code == 0
    assert _predictions(tmp_path / "lean")[0] == _predictions(tmp_path / "all")[0]
    assert (
        np.abs(_predictions(tmp_path / "lean")[1] - _predictions(tmp_path / "all")[1]).max() <= 1e-5
    )
    labels, scores = _predictions(tmp_path / "all")
    labels_once, scores_once = _predictions(tmp_path / "once")
    assert labels_once == labels
    assert np.abs(scores_once - scores).max() <= 1e-5
    name = "prediction_results_highestscore.csv"
    assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "all" / name).read_bytes()
    assert _read_calls(tmp_path / "once") == _read_calls(tmp_path / "all")

    total = len(labels)
    assert plain.summary["dedup"] == {
        "enabled": False,
        "dnabert": {"unique": total, "total": total},
        "esm": {"unique": total, "total": total},
    }
    dedup = once.summary["dedup"]
    assert dedup["enabled"]
    # 30 % of the reads are copies: about 30 % of the ORFs are repeated inputs.
    for model in ("dnabert", "esm"):
        assert dedup[model]["total"] == total
        assert 0.6 * total < dedup[model]["unique"] < 0.75 * total, dedup
        # Each unique input was embedded exactly once.
        assert once.summary["embedding"][model]["embedded"] == dedup[model]["unique"]
        assert plain.summary["embedding"][model]["embedded"] == total
        assert once.summary["embedding"][model]["orfs"] == total
    # The store holds each copy's source; the rows read through it equal the full run's.
    stored = zarr.open_group(tmp_path / "once" / "embeddings.zarr", mode="r")
    full = zarr.open_group(tmp_path / "all" / "embeddings.zarr", mode="r")
    for model in ("dnabert", "esm"):
        source = stored[f"{model}_source"][:]
        assert (source <= np.arange(total)).all()
        assert (source != np.arange(total)).sum() == total - dedup[model]["unique"]
        assert np.abs(read_rows(stored, model, 0, total) - full[model][:]).max() <= 1e-5
    assert not (tmp_path / "once" / ".scratch").exists()


def test_a_failed_input_fails_every_copy_as_without_dedup(client, tmp_path):
    """A DNABERT-S token renumbered out of the vocabulary makes the ORFs holding it fail;
    their input occurs several times: every copy is failed, as a run embedding each is."""
    from tokenizers import Tokenizer

    from virnuc_dask.core.formats import plan_blocks, read_block
    from virnuc_dask.core.orfs import orfs_from_records

    reads = write_duplicated_reads(tmp_path / "dup.fa", 120, share=0.3, seed=5)
    orfs = orfs_from_records(
        [r for b in plan_blocks([str(reads)]) for r in read_block(b)], 500
    ).orfs
    model = tmp_path / "dnabert"
    shutil.copytree(TINY["dnabert_model"], model)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    holders: dict[int, set[str]] = {}
    for orf in orfs:
        for token in set(tokenizer.encode(orf.nucleotide).ids):
            holders.setdefault(token, set()).add(orf.nucleotide)
    copies = collections.Counter(o.nucleotide for o in orfs)
    token = min(t for t, seqs in holders.items() if len(seqs) == 1 and copies[next(iter(seqs))] > 1)
    spec = json.loads((model / "tokenizer.json").read_text())
    inverse = {v: k for k, v in spec["model"]["vocab"].items()}
    spec["model"]["vocab"][inverse[token]] = 4096
    (model / "tokenizer.json").write_text(json.dumps(spec))

    every = _run(client, [reads], tmp_path / "all", 500, dedup=False, dnabert_model=str(model))
    once = _run(client, [reads], tmp_path / "once", 500, dnabert_model=str(model))
    assert every.exit_code == once.exit_code == 2
    failed = (tmp_path / "once" / "failed_records.tsv").read_text()
    assert failed == (tmp_path / "all" / "failed_records.tsv").read_text()
    assert failed.count("\tdnabert\t") == copies[next(iter(holders[token]))] >= 2
    assert _predictions(tmp_path / "once")[0] == _predictions(tmp_path / "all")[0]
    assert _read_calls(tmp_path / "once") == _read_calls(tmp_path / "all")
