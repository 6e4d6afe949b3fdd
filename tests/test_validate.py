"""``virnuc-dask validate``: counts equal to the reference, every bad input named with its line,
and a run-time estimate from the models' real shapes and token counts."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest
from helpers import CASES, LENGTHS, REFERENCE, TINY

from virnuc_dask.cli.main import main
from virnuc_dask.config import load_settings
from virnuc_dask.core.fasta import Record
from virnuc_dask.core.formats import plan_blocks, read_block
from virnuc_dask.core.orfs import orfs_from_records
from virnuc_dask.models.flops import esm_source_shape
from virnuc_dask.validate.inputs import validate


def run_validate(capsys, *argv: str) -> tuple[int, str]:
    code = main(["validate", "--no-estimate", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def reference_summary() -> dict[str, dict[str, str]]:
    lines = (REFERENCE / "dev" / "summary.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {
        row[0]: dict(zip(header, row, strict=True))
        for row in (line.split("\t") for line in lines[1:])
    }


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_counts_match_the_original(tmp_path, capsys, case, length):
    expected = reference_summary()[case]
    code, out = run_validate(
        capsys,
        str(REFERENCE / "dev" / case / "input.fa"),
        "--length",
        str(length),
        "--json",
        str(tmp_path / "v.json"),
    )
    assert code == 0, out
    doc = json.loads((tmp_path / "v.json").read_text())
    (f,) = doc["files"]
    assert f["records"] == int(expected["reads"])
    assert f["chunks"] == int(expected[f"L{length}_chunks"])
    assert f["orfs"] == int(expected[f"L{length}_orfs"])
    assert f["records"] - f["reads_without_orf"] == int(expected[f"L{length}_reads_with_orf"])
    assert f["length"]["min"] == int(expected["min_len"])
    assert f["length"]["max"] == int(expected["max_len"])
    assert f"{f['chunks']:,} chunks of {length} bp · {f['orfs']:,} ORFs" in out


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def fasta(reads: list[tuple[str, str]]) -> bytes:
    return "".join(f">{name}\n{seq}\n" for name, seq in reads).encode()


def coding(n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    codons = [
        a + b + c
        for a in "ACGT"
        for b in "ACGT"
        for c in "ACGT"
        if a + b + c not in ("TAA", "TAG", "TGA")
    ]
    return "".join(rng.choice(codons) for _ in range(n // 3))


GOOD = fasta([("ok1", coding(450)), ("ok2", coding(600, 2))])


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# (name, file content or None for a missing path, exit code, expected text in the output)
BAD_INPUTS = [
    ("empty.fa", b"", 2, r"empty\.fa: line 1: problem: no FASTA records"),
    (
        "not_fasta.fa",
        b"sample\tcount\nread1\t5\n",
        1,
        r"not_fasta\.fa: line 1: error: not FASTA: expected a '>' header line, found "
        r"'sample\\tcount'",
    ),
    (
        "garbage.bin",
        random.Random(7).randbytes(4096),
        1,
        r"garbage\.bin: line \d+: error: not FASTA",
    ),
    (
        "garbage_after_header.fa",
        b">r1\nACGTACGT\n>r2\nAC\x00\xff\xfeGT\n",
        1,
        r"garbage_after_header\.fa: line 4: record 'r2': error: .*NUL",
    ),
    (
        "truncated.fa.gz",
        None,
        1,
        r"truncated\.fa\.gz: line (\d+): error: corrupt or truncated gzip data",
    ),
    (
        "empty_record.fa",
        fasta([("r1", coding(300)), ("r2", ""), ("r3", coding(300))]),
        2,
        r"empty_record\.fa: line 3: record 'r2': problem: empty sequence",
    ),
    (
        "duplicates.fa",
        fasta([("a", coding(300)), ("b", coding(303)), ("a", coding(306))]),
        2,
        r"duplicates\.fa: line 5: record 'a': problem: duplicate read id \(first at "
        r".*duplicates\.fa line 1\)",
    ),
    (
        "non_iupac.fa",
        fasta([("r1", coding(300)), ("r2", "ACGTXZ" + coding(300)), ("r3", "AC GT")]),
        2,
        r"non_iupac\.fa: line 3: record 'r2': problem: contains characters that are not IUPAC "
        r"nucleotide codes: 'X','Z'",
    ),
    (
        "crlf.fa",
        GOOD.replace(b"\n", b"\r\n"),
        0,
        r"crlf\.fa: line 1: note: Windows line endings \(CRLF\); accepted",
    ),
    (
        "long_read.fa",
        fasta([("big", coding(1_000_000, 3))]),
        0,
        r"long_read\.fa: line 1: record 'big': note: long read: 999,999 bp, 2,000 chunks",
    ),
    (
        "short_reads.fa",
        fasta([("s1", "AC"), ("s2", "A"), ("ok", coding(300))]),
        0,
        r"short_reads\.fa: line 1: record 's1': note: 2 bp: shorter than 3 bp, no ORF possible",
    ),
    (
        "header_only.fa",
        b">only_a_header description\n",
        2,
        r"header_only\.fa: line 1: record 'only_a_header': problem: empty sequence",
    ),
    ("missing.fa", None, 1, r"missing\.fa: error: no such file"),
]


@pytest.mark.parametrize("name, data, code, pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_named_with_its_line(tmp_path, capsys, name, data, code, pattern):
    path = tmp_path / name
    if name == "truncated.fa.gz":
        whole = gzip_bytes(b"".join(fasta([(f"r{i}", coding(600, i))]) for i in range(200)))
        write(path, whole[: len(whole) // 2])
    elif data is not None:
        write(path, data)
    got, out = run_validate(capsys, str(path), "--length", "500")
    assert got == code, out
    found = re.search(pattern, out)
    assert found, out
    assert "Traceback" not in out
    if name == "truncated.fa.gz":  # the line where the readable data ends, not line 1
        assert 100 < int(found.group(1)) < 400  # of 400 lines


def test_short_reads_are_counted_and_the_rest_still_checked(tmp_path, capsys):
    path = write(tmp_path / "s.fa", fasta([("s1", "AC"), ("s2", "A"), ("ok", coding(300))]))
    code, out = run_validate(capsys, path, "--length", "300")
    assert code == 0
    assert "< 3 bp (no ORF): 2" in out
    assert "line 3: record 's2': note: 1 bp" in out
    assert "2 reads without ORF" in out


def test_duplicates_across_inputs_and_exit_code_of_the_worst(tmp_path, capsys):
    one = write(tmp_path / "one.fa", fasta([("x", coding(300)), ("y", coding(300, 2))]))
    two = write(
        tmp_path / "two.fa.gz", gzip_bytes(fasta([("z", coding(300)), ("x", coding(300, 3))]))
    )
    code, out = run_validate(capsys, one, two)
    assert code == 2
    assert re.search(
        r"two\.fa\.gz: line 3: record 'x': problem: duplicate read id "
        r"\(first at .*one\.fa line 1\)",
        out,
    ), out
    assert "(gzip)" in out
    code, out = run_validate(capsys, one, two, str(tmp_path / "absent.fa"))
    assert code == 1  # an unreadable input outweighs problems


def test_findings_are_capped_per_kind(tmp_path, capsys):
    reads = [(f"e{i}", "") for i in range(30)] + [("ok", coding(300))]
    code, out = run_validate(
        capsys, write(tmp_path / "many.fa", fasta(reads)), "--max-findings", "5"
    )
    assert code == 2
    assert out.count("problem: empty sequence") == 5
    assert "... and 25 more problems" in out


def test_estimate_uses_the_models_shapes_and_token_counts(tmp_path):
    from tokenizers import Tokenizer

    from virnuc_dask.models.esm2 import load_esm

    fa = str(REFERENCE / "dev" / "basic" / "input.fa")
    settings = load_settings(
        inputs=[fa],
        overrides={
            "length": 300,
            "esm_model": TINY["esm_model"],
            "dnabert_model": TINY["dnabert_model"],
        },
    )
    files, est = validate([fa], settings)
    assert est is not None and "error" not in est

    records = [r for b in plan_blocks([fa]) for r in read_block(b)]
    orfs = orfs_from_records(records, 300).orfs
    model, alphabet = load_esm(TINY["esm_model"])
    # ESM-2 tokens: BOS + residues + EOS, as fair-esm's batch converter makes them
    converter = alphabet.get_batch_converter()
    _, _, tokens = converter([(o.id, o.protein) for o in orfs[:50]])
    assert sum(len(o.protein) + 2 for o in orfs[:50]) == int((tokens != alphabet.padding_idx).sum())
    assert est["esm_tokens"] == sum(len(o.protein) + 2 for o in orfs)
    # every weight matrix of the layers and the LM head is counted, nothing else
    shape = esm_source_shape(TINY["esm_model"])
    matrices = sum(p.numel() for name, p in model.layers.named_parameters() if p.dim() == 2)
    assert shape.layers * shape.weights_per_layer == matrices
    head = model.lm_head
    assert shape.head_weights == head.dense.weight.numel() + head.weight.numel()
    # DNABERT-S tokens: with the tokenizer at hand and every ORF sampled, exact
    tokenizer = Tokenizer.from_file(str(Path(TINY["dnabert_model"]) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    exact = sum(len(e.ids) for e in tokenizer.encode_batch([o.nucleotide for o in orfs]))
    assert est["dnabert_tokens"] == pytest.approx(exact, abs=1)
    # time = FLOPs / measured rate
    assert est["seconds_at_peak"] == pytest.approx(est["flops"] / est["matmul_flops_per_s"])
    assert est["device"] == "cpu" and est["precision"] == "fp32"


def test_estimate_for_the_published_models_without_their_files(tmp_path, capsys):
    path = write(tmp_path / "r.fa", GOOD)
    code = main(["validate", path, "--json", str(tmp_path / "v.json")])
    out = capsys.readouterr().out
    assert code == 0
    est = json.loads((tmp_path / "v.json").read_text())["estimate"]
    assert est["esm_shape"] == "36 layers x 2560" and est["dnabert_shape"] == "12 layers x 768"
    # ESM-2 3B: about 2 x 2.8e9 FLOP per token (DESIGN.md), plus attention
    per_token = est["esm_flops"] / est["esm_tokens"]
    assert 5.6e9 < per_token < 5.9e9
    assert re.search(r"at that rate: .*; at 50% of it .* about ", out), out


def test_format_duplicate_share_and_unique_orfs(tmp_path, capsys):
    reads = [(f"r{i}", coding(300, i)) for i in range(6)]
    copies = [("c1", reads[0][1]), ("c2", reads[0][1].lower()), ("c3", reads[4][1])]
    fq = "".join(f"@{n} lane=1\n{s}\n+\n{'#' * len(s)}\n" for n, s in reads[:4] + copies[:2])
    one = write(tmp_path / "one.fastq.gz", gzip_bytes(fq.encode()))
    two = write(tmp_path / "two.fa", fasta(reads[4:] + copies[2:]))
    code, out = run_validate(
        capsys, one, two, "--length", "300", "--json", str(tmp_path / "v.json")
    )
    assert code == 0, out
    assert re.search(r"one\.fastq\.gz: 6 records, [\d,]+ bp, FASTQ \(gzip\)", out), out
    assert re.search(r"two\.fa: 3 records, [\d,]+ bp, FASTA \(plain\)", out), out
    assert "duplicates: 3 of 9 reads (33.3%) repeat an earlier read's sequence" in out
    doc = json.loads((tmp_path / "v.json").read_text())
    assert [f["format"] for f in doc["files"]] == ["fastq", "fasta"]
    orfs = sum(f["orfs"] for f in doc["files"])
    unique = orfs_from_records([Record(n, s, "x", 1) for n, s in reads], 300).orfs
    repeats = doc["repeats"]
    assert repeats["reads"] == {"total": 9, "unique": 6, "duplicate_share": 3 / 9}
    for model, column in (("dnabert", "nucleotide"), ("esm", "protein")):
        assert repeats[model]["total"] == orfs
        assert repeats[model]["unique"] == len({getattr(o, column) for o in unique})
    assert (
        f"expected unique ORFs (embedded once each): DNABERT-S "
        f"{repeats['dnabert']['unique']:,}, ESM-2 {repeats['esm']['unique']:,} of {orfs:,}" in out
    )


def test_the_estimate_on_a_gpu_node_creates_no_cuda_context_here(monkeypatch):
    """NVML says there is a GPU of compute capability 9.0; the rate is measured by a child
    process. The stand-ins replace what only a GPU node has; any CUDA call of this
    process (torch initialises CUDA lazily, at its first such call) fails the test."""
    import torch

    import virnuc_dask.cluster.workers as workers
    import virnuc_dask.validate.estimate as estimate_module
    import virnuc_dask.worker.device as device

    def no_cuda(*args, **kwargs):
        raise AssertionError("the estimate initialised CUDA in the client")

    measured = []
    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(workers, "visible_gpus", lambda gpus=None: ["GPU-1234"])
    monkeypatch.setattr(device, "nvml_capability", lambda entry: (9, 0))
    monkeypatch.setattr(
        estimate_module,
        "gpu_matmul_peak",
        lambda gpu, dtype: measured.append((gpu, dtype)) or 7.5e14,
    )
    fa = str(REFERENCE / "dev" / "basic" / "input.fa")
    settings = load_settings(inputs=[fa], overrides={"length": 300, **TINY})
    _, est = validate([fa], settings)
    assert measured == [("GPU-1234", "bfloat16")]
    assert est["device"] == "cuda" and est["precision"] == "bf16-mixed"
    assert est["matmul_flops_per_s"] == 7.5e14
    assert not torch.cuda.is_initialized()
