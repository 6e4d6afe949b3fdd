"""``virnuc-dask validate INPUT...``: check FASTA and FASTQ inputs without running any model.

For each input: its format (FASTA or FASTQ, plain or gzip, from the content),
records, bases, the length distribution, the chunks and ORFs a run will produce
(the same pure functions as ``predict``: ``orfs.orfs_from_records``), and every
finding with its file, line and record:

- **errors** (exit 1): the file cannot be read as FASTA or FASTQ at all: missing, a
  directory, not FASTA, malformed FASTQ, binary data, text that is not UTF-8, corrupt or
  truncated gzip;
- **problems** (exit 2): ``predict`` will skip these records and list them in
  ``failed_records.tsv``: empty sequence (also a header-only file), characters
  that are not IUPAC nucleotide codes, a read id seen before; or a file with no
  record at all;
- **notes** (exit code unchanged): accepted, but worth knowing: Windows (CRLF)
  or old Mac (CR) line endings, reads shorter than 3 bp (no ORF possible; the
  original drops them silently), very long reads.

Over all inputs: the share of reads that repeat an earlier read's sequence and the
unique ORF inputs per model (what a run with dedup embeds). Finally an estimate
of the embedding time for the chosen models on this
machine: model FLOPs of every ORF (``2 x weights + attention`` per token, from
the models' shapes and the ORFs' token counts) divided by a matrix-multiply rate
measured here.

What one input holds, its findings and the figures drawn from them:
:mod:`.input_stats`.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from virnuc_dask.config import Settings
from virnuc_dask.core.fasta import Record
from virnuc_dask.core.formats import plan_blocks, read_block
from virnuc_dask.core.pairs import (
    check_mate_order,
    first_mismatch,
    mate_id,
    mate_layout,
    mate_pairs,
    pair_hashes,
)
from virnuc_dask.core.samplesheet import Sample, SampleSheet
from virnuc_dask.errors import InputFormatError
from virnuc_dask.files import is_gzip
from virnuc_dask.validate.estimate import estimate
from virnuc_dask.validate.input_stats import FileStats, Finding, add_records

logger = logging.getLogger(__name__)

EXIT_CLEAN, EXIT_UNREADABLE, EXIT_PROBLEMS = 0, 1, 2
#: Base pairs per DNABERT-S token, measured with the published tokenizer on coding-like
#: reads (perf/reads_2k.fa ORFs: 4.76); used when the tokenizer is not on this machine.
#: Shapes of the published models: layers, width, feed-forward width.


def _line_endings(path: str, compressed: bool) -> Finding | None:
    """A note when the file's first 1 MiB uses CRLF or lone CR line ends."""
    try:
        opener = gzip.open if compressed else open
        with opener(path, "rb") as fh:
            head = fh.read(1 << 20)
    except (OSError, EOFError, zlib.error):
        return None
    crlf = head.find(b"\r\n")
    if crlf >= 0:
        return Finding(
            "note",
            path,
            head.count(b"\n", 0, crlf) + 1,
            None,
            "Windows line endings (CRLF); accepted",
        )
    cr = head.find(b"\r")
    if cr >= 0:
        return Finding(
            "note", path, head.count(b"\n", 0, cr) + 1, None, "old Mac line endings (CR); accepted"
        )
    return None


def check_file(
    path: str, *, chunk_size: int, blocksize: int, max_findings: int, mate: int | None = None
) -> FileStats:
    """Read one input completely; unreadable parts become ``error`` findings.

    ``mate``: the file holds mate 1 or 2 of paired reads (named ``<id>/<mate>``, as a
    run names them; ``stats.pairs`` gets their pair ids' hashes).
    """
    stats = FileStats(path)
    try:
        blocks = plan_blocks([path], blocksize)
    except FileNotFoundError:
        stats.add(Finding("error", path, None, None, "no such file"), max_findings)
        return stats
    except InputFormatError as exc:
        stats.add(_format_error(path, exc), max_findings)
        return stats
    except OSError as exc:
        stats.add(
            Finding("error", path, None, None, f"cannot be read: {exc.strerror}"), max_findings
        )
        return stats
    stats.compressed = blocks[0].stop is None and is_gzip(path)
    stats.format = blocks[0].format
    ending = _line_endings(path, stats.compressed)
    if ending is not None:
        stats.add(ending, max_findings)
    for block in blocks:
        try:
            records = read_block(block)
        except InputFormatError as exc:
            stats.add(_format_error(path, exc), max_findings)
            return stats
        except OSError as exc:
            stats.add(
                Finding("error", path, None, None, f"cannot be read: {exc.strerror}"), max_findings
            )
            return stats
        if mate is not None:
            stats.pairs.append(pair_hashes([r.id for r in records], mate))
            records = [Record(mate_id(r.id, mate), r.sequence, r.path, r.line) for r in records]
        add_records(stats, records, chunk_size=chunk_size, max_findings=max_findings)
    if stats.records == 0:
        stats.add(
            Finding("problem", path, 1, None, "no FASTA records (empty file or only blank lines)"),
            max_findings,
        )
    return stats


def _format_error(path: str, exc: InputFormatError) -> Finding:
    line = exc.line
    if "gzip" in exc.problem and is_gzip(path):
        line = _gzip_lines_before_error(path)  # where the readable data ends, not line 1
    return Finding("error", path, line, exc.record, exc.problem)


def _gzip_lines_before_error(path: str) -> int:
    """1-based line at which a corrupt or truncated gzip file stops decompressing."""
    lines, decoder = 1, zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 14):
            while chunk:
                try:
                    lines += decoder.decompress(chunk).count(b"\n")
                except zlib.error:
                    return lines
                chunk = decoder.unused_data if decoder.eof else b""
                if decoder.eof:  # next member of a multi-member file
                    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return lines


def find_duplicates(files: Sequence[FileStats], *, max_findings: int) -> None:
    """Add a ``problem`` for every read whose id occurred earlier in any input."""
    hashes = [np.concatenate(f.hashes) if f.hashes else np.zeros(0, np.uint64) for f in files]
    allh = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    if len(allh) < 2:
        return
    _, first, inverse = np.unique(allh, return_index=True, return_inverse=True)
    dup = np.flatnonzero(first[inverse] != np.arange(len(allh)))
    if not len(dup):
        return
    offsets = np.cumsum([0] + [len(h) for h in hashes])
    lines = [np.concatenate(f.lines) if f.lines else np.zeros(0, np.int64) for f in files]

    def where(pos: int) -> tuple[int, int]:
        i = int(np.searchsorted(offsets, pos, side="right") - 1)
        return i, int(lines[i][pos - offsets[i]])

    wanted: dict[int, set[int]] = {}
    pairs = []
    for pos in dup:
        i, line = where(int(pos))
        j, first_line = where(int(first[inverse[pos]]))
        pairs.append((i, line, j, first_line))
        wanted.setdefault(i, set()).add(line)
    ids = _ids_at(files, wanted)
    for i, line, j, first_line in pairs:
        read_id = ids.get((i, line))
        files[i].add(
            Finding(
                "problem",
                files[i].path,
                line,
                read_id,
                f"duplicate read id (first at {files[j].path} line {first_line})",
            ),
            max_findings,
        )


def find_unpaired(first: FileStats, second: FileStats, *, max_findings: int) -> None:
    """An ``error`` where the reads of two mate files stop being mates (a run stops there)."""
    if first.counts["error"] or second.counts["error"]:
        return
    joined = [
        np.concatenate(f.pairs) if f.pairs else np.zeros(0, np.uint64) for f in (first, second)
    ]
    k = first_mismatch(*joined)
    if k is None:
        return
    if k >= len(joined[1]) or k >= len(joined[0]):
        longer, shorter = (first, second) if k < len(joined[0]) else (second, first)
        problem = (
            f"no mate: {shorter.path} ends after {k:,} reads, this file has more; "
            "the two files of a pair must hold the same reads in the same order"
        )
    else:
        longer = second
        problem = (
            f"mates out of order: read {k + 1:,} is not the mate of read {k + 1:,} of "
            f"{first.path}; the two files of a pair must hold the same reads in the same order"
        )
    line = int(np.concatenate(longer.lines)[k])
    read_id = _ids_at([longer], {0: {line}}).get((0, line))
    longer.add(Finding("error", longer.path, line, read_id, problem), max_findings)


def _ids_at(files: Sequence[FileStats], wanted: dict[int, set[int]]) -> dict[tuple[int, int], str]:
    """Read ids of the records whose header is on the given lines (a second, rare pass)."""
    out = {}
    for i, lines in wanted.items():
        for block in plan_blocks([files[i].path], 1 << 26):
            for rec in read_block(block):
                if rec.line in lines:
                    out[(i, rec.line)] = rec.id
    return out


def exit_code(files: Iterable[FileStats]) -> int:
    files = list(files)
    if any(f.counts["error"] for f in files):
        return EXIT_UNREADABLE
    if any(f.counts["problem"] for f in files):
        return EXIT_PROBLEMS
    return EXIT_CLEAN


def validate(
    inputs: Sequence[str], settings: Settings, *, max_findings: int = 20, with_estimate: bool = True
) -> tuple[list[FileStats], dict[str, Any] | None]:
    """Check every input; the estimate only when some input has ORFs and none is unreadable."""
    layout = mate_layout(inputs)
    files = [
        check_file(
            p,
            chunk_size=settings.length,
            blocksize=settings.blocksize,
            max_findings=max_findings,
            mate=mate,
        )
        for p, mate in zip(inputs, layout, strict=True)
    ]
    for pair in mate_pairs(layout):
        find_unpaired(files[pair.first], files[pair.second], max_findings=max_findings)
    try:
        check_mate_order(list(inputs))
    except InputFormatError as exc:  # mate files out of order: predict stops on it
        second = next(f for f in files if f.path == exc.path)
        second.add(Finding("error", exc.path, exc.line, exc.record, exc.problem), max_findings)
    find_duplicates(files, max_findings=max_findings)
    est = None
    if with_estimate and sum(f.orfs for f in files) and exit_code(files) != EXIT_UNREADABLE:
        est = estimate(files, settings)
    return files, est


def validate_samples(
    sheet: SampleSheet, settings: Settings, *, max_findings: int = 20, with_estimate: bool = True
) -> tuple[list[tuple[Sample, list[FileStats]]], dict[str, Any] | None]:
    """:func:`validate` for each sample of a sheet (a sample is a run of its own: reads of
    different samples may share ids); one estimate for the whole run."""
    checked = [
        (s, validate(s.inputs, settings, max_findings=max_findings, with_estimate=False)[0])
        for s in sheet
    ]
    files = [f for _, fs in checked for f in fs]
    est = None
    if with_estimate and sum(f.orfs for f in files) and exit_code(files) != EXIT_UNREADABLE:
        est = estimate(files, settings)
    return checked, est


# -- command line -------------------------------------------------------------------------
