"""What one input holds, as ``virnuc-dask validate`` counts it: the ``Finding`` record
(error, problem or note, with file, line and record), ``FileStats`` (records, bases,
lengths, chunks, ORFs, tokens, content hashes, findings) and the counting of one block's
records into it; and the figures drawn from them: read-length buckets, one file's
summary for the JSON document, and the repeated reads and ORF inputs over all inputs.

>>> from virnuc_dask.core.fasta import Record
>>> stats = FileStats("in.fa")
>>> add_records(stats, [Record("r1", "ATGAAACCC", "in.fa", 1), Record("r2", "", "in.fa", 3)],
...             chunk_size=300, max_findings=10)
>>> stats.records, stats.orfs, [(f.line, f.message) for f in stats.findings]
(2, 5, [(3, 'empty sequence')])
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from virnuc_dask.core.fasta import Record
from virnuc_dask.core.orfs import content_hashes, orfs_from_records
from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS
from virnuc_dask.validate.estimate import SAMPLE_FOR_TOKENIZER

LONG_READ = 100_000


@dataclasses.dataclass(frozen=True)
class Finding:
    """Something found in an input: ``kind`` is ``error``, ``problem`` or ``note``."""

    kind: str
    path: str
    line: int | None
    record: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.path]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.record is not None:
            parts.append(f"record '{self.record}'")
        return ": ".join([*parts, f"{self.kind}: {self.message}"])


@dataclasses.dataclass
class FileStats:
    """What one input holds; ``findings`` keeps the first ``max_findings`` of each kind."""

    path: str
    compressed: bool = False
    format: str = "fasta"
    records: int = 0
    bases: int = 0
    chunks: int = 0
    orfs: int = 0
    reads_no_orf: int = 0
    esm_tokens: int = 0
    esm_tokens_sq: int = 0
    nucleotide_bases: int = 0
    nucleotide_sq: int = 0
    lengths: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    findings: list[Finding] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"error": 0, "problem": 0, "note": 0}
    )
    hashes: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    lines: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    #: Hashes of the pair ids of a mate file's reads (see :mod:`virnuc_dask.core.pairs`).
    pairs: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    sample: list[str] = dataclasses.field(default_factory=list, repr=False)
    #: 64 bits of the content hash of each accepted read's sequence and of each ORF's
    #: model inputs: enough to count repeats (a collision among 10^9 is unlikely, and
    #: would shift a count by one).
    content: dict[str, list[np.ndarray]] = dataclasses.field(
        default_factory=lambda: {key: [] for key in ("reads", *MODEL_KEYS)}, repr=False
    )

    def add(self, finding: Finding, max_findings: int) -> None:
        self.counts[finding.kind] += 1
        if sum(f.kind == finding.kind for f in self.findings) < max_findings:
            self.findings.append(finding)

    def length_array(self) -> np.ndarray:
        return np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)


def _id_hash(read_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(read_id.encode(), digest_size=8).digest(), "little")


def add_records(
    stats: FileStats, records: Sequence[Record], *, chunk_size: int, max_findings: int
) -> None:
    """Count one block's records into ``stats`` (chunks, ORFs, tokens, findings)."""
    table = orfs_from_records(records, chunk_size)
    stats.records += len(records)
    lengths = np.fromiter((len(r.sequence) for r in records), np.int64, len(records))
    stats.lengths.append(lengths)
    stats.bases += int(lengths.sum())
    stats.hashes.append(np.fromiter((_id_hash(r.id) for r in records), np.uint64, len(records)))
    stats.lines.append(np.fromiter((r.line for r in records), np.int64, len(records)))
    accepted = [
        r.sequence.upper()
        for r, read in zip(records, table.reads, strict=True)
        if read.problem is None
    ]
    stats.content["reads"].append(content_hashes(accepted)[:, 0])
    for m in EMBEDDING_MODELS:
        inputs = [getattr(o, m.embeds) for o in table.orfs]
        stats.content[m.key].append(content_hashes(inputs)[:, 0])
    for rec, read in zip(records, table.reads, strict=True):
        if read.problem is not None:
            stats.add(Finding("problem", rec.path, rec.line, rec.id, read.problem), max_findings)
            continue
        stats.chunks += read.chunks
        stats.reads_no_orf += read.orfs == 0
        if read.length < 3:
            stats.add(
                Finding(
                    "note",
                    rec.path,
                    rec.line,
                    rec.id,
                    f"{read.length} bp: shorter than 3 bp, no ORF possible",
                ),
                max_findings,
            )
        elif read.length >= LONG_READ:
            stats.add(
                Finding(
                    "note",
                    rec.path,
                    rec.line,
                    rec.id,
                    f"long read: {read.length:,} bp, {read.chunks:,} chunks, {read.orfs:,} ORFs",
                ),
                max_findings,
            )
    stats.orfs += len(table.orfs)
    protein = np.fromiter((len(o.protein) + 2 for o in table.orfs), np.int64, len(table.orfs))
    nucleotide = np.fromiter((len(o.nucleotide) for o in table.orfs), np.int64, len(table.orfs))
    stats.esm_tokens += int(protein.sum())
    stats.esm_tokens_sq += int((protein**2).sum())
    stats.nucleotide_bases += int(nucleotide.sum())
    stats.nucleotide_sq += int((nucleotide**2).sum())
    room = SAMPLE_FOR_TOKENIZER - len(stats.sample)
    if room > 0:
        stats.sample.extend(o.nucleotide for o in table.orfs[:room])


def length_buckets(lengths: np.ndarray, chunk_size: int) -> list[tuple[str, int]]:
    """Read counts in ranges that matter for chunking."""
    edges = [
        (0, 3, "< 3 bp (no ORF)"),
        (3, chunk_size, f"3 bp - {chunk_size - 1} bp (1 chunk)"),
        (chunk_size, 2 * chunk_size + 1, f"{chunk_size} - {2 * chunk_size} bp (1-2 chunks)"),
        (2 * chunk_size + 1, 10 * chunk_size + 1, f"{2 * chunk_size + 1} - {10 * chunk_size} bp"),
        (10 * chunk_size + 1, None, f"> {10 * chunk_size} bp"),
    ]
    out = []
    for lo, hi, label in edges:
        n = int(((lengths >= lo) & (lengths < hi if hi is not None else True)).sum())
        out.append((label, n))
    return out


def file_summary(stats: FileStats, chunk_size: int) -> dict[str, Any]:
    lengths = stats.length_array()
    out: dict[str, Any] = {
        "path": stats.path,
        "format": stats.format,
        "gzip": stats.compressed,
        "records": stats.records,
        "bases": stats.bases,
        "chunks": stats.chunks,
        "orfs": stats.orfs,
        "reads_without_orf": stats.reads_no_orf,
        "esm_tokens": stats.esm_tokens,
        "errors": stats.counts["error"],
        "problems": stats.counts["problem"],
        "notes": stats.counts["note"],
        "findings": [dataclasses.asdict(f) for f in stats.findings],
    }
    if len(lengths):
        out["length"] = {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
            "buckets": dict(length_buckets(lengths, chunk_size)),
        }
    return out


def repeated_inputs(files: Sequence[FileStats]) -> dict[str, dict[str, Any]]:
    """Over all inputs: reads and ORF inputs per model, total and unique (a run with
    dedup embeds each unique ORF input once); ``duplicate_share`` of the reads."""
    out: dict[str, dict[str, Any]] = {}
    for key in ("reads", *MODEL_KEYS):
        parts = [h for f in files for h in f.content[key]]
        allh = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        total, unique = len(allh), len(np.unique(allh))
        out[key] = {
            "total": total,
            "unique": unique,
            "duplicate_share": (total - unique) / total if total else 0.0,
        }
    return out
