"""``viral_reads.fastq.gz`` (or ``viral_reads.fasta.gz``): the input records of the reads
predicted ``virus``, as they were in the input (header line with its comment,
sequence, qualities), in input order.

Pairs stay together: when either mate is predicted ``virus`` both mates are written,
mate 1 then mate 2 (an interleaved file, as ``seqtk mergepe`` writes it; split it with
``seqtk seq -1`` / ``-2``).  FASTQ inputs give FASTQ; when any input is FASTA the file
is FASTA (FASTQ records lose their qualities).

The records are matched with ``read_predictions.tsv`` by position: the run wrote one
row per input record, in input order (mate 1 file, then mate 2 file, lane after lane),
so no read id is looked up.  Written only once the run's results are complete; the file
appears whole (written beside it, then renamed).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from virnuc_dask.core.pairs import first_title, mate_layout
from virnuc_dask.files import atomic_writer, is_gzip
from virnuc_dask.rundir import READS, VIRAL_READS


def _open_text(path: str) -> IO[str]:
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8", newline=None)
    return open(path, encoding="utf-8", newline=None)


def records(path: str) -> Iterator[tuple[str, str, str | None]]:
    """(header line without its marker, sequence, qualities or None) of every record of a
    FASTA or FASTQ file the run has read (so already known to be well formed)."""
    kind = (first_title(path) or ("fasta", ""))[0]
    with _open_text(path) as fh:
        lines = (line.rstrip("\n") for line in fh)
        if kind == "fastq":
            # Blank lines only before the first record and after the last (an empty
            # record's sequence and quality lines are blank too).
            heads = (line for line in lines if line.strip())
            for head in heads:
                seq, _, qual = next(lines, ""), next(lines, ""), next(lines, "")
                yield head[1:], seq.rstrip(" \t"), qual.rstrip(" \t")
            return
        head, seq = None, []
        for line in lines:
            if line.startswith(">"):
                if head is not None:
                    yield head, "".join(seq), None
                head, seq = line[1:], []
            elif head is not None:
                seq.append(line.replace(" ", "").replace("\t", ""))
        if head is not None:
            yield head, "".join(seq), None


def _calls(reads_tsv: Path) -> bytearray:
    """1 for every row of ``read_predictions.tsv`` predicted ``virus``, else 0."""
    calls = bytearray()
    with open(reads_tsv) as fh:
        next(fh)
        for line in fh:
            calls.append(line.rstrip("\n").rsplit("\t", 1)[1] == "virus")
    return calls


def _entry(record: tuple[str, str, str | None], fastq: bool) -> str:
    head, seq, qual = record
    if fastq:
        return f"@{head}\n{seq}\n+\n{qual}\n"
    return f">{head}\n{seq}\n"


def viral_reads_name(inputs: Sequence[str]) -> str:
    """``viral_reads.fastq.gz`` when every input is FASTQ, else ``viral_reads.fasta.gz``."""
    kinds = {(first_title(p) or ("fasta", ""))[0] for p in inputs}
    return f"{VIRAL_READS}.{'fastq' if kinds == {'fastq'} else 'fasta'}.gz"


def write_viral_reads(out: str | os.PathLike[str], inputs: Sequence[str]) -> dict[str, int]:
    """Write the viral reads of the finished run in ``out`` whose inputs were ``inputs``;
    the counts: ``records`` written and ``pairs`` among them kept together."""
    out, inputs = Path(out), list(inputs)
    name = viral_reads_name(inputs)
    fastq = name.endswith(".fastq.gz")
    calls = _calls(out / READS)
    layout = mate_layout(inputs)
    written = {"records": 0, "pairs": 0}
    row = 0
    with (
        atomic_writer(out / name, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
    ):
        i = 0
        while i < len(inputs):
            if layout[i] == 1:
                n = sum(1 for _ in records(inputs[i]))
                first, second = records(inputs[i]), records(inputs[i + 1])
                for k, (one, two) in enumerate(zip(first, second, strict=True)):
                    if calls[row + k] or calls[row + n + k]:
                        gz.write((_entry(one, fastq) + _entry(two, fastq)).encode())
                        written["records"] += 2
                        written["pairs"] += 1
                row, i = row + 2 * n, i + 2
                continue
            for record in records(inputs[i]):
                if calls[row]:
                    gz.write(_entry(record, fastq).encode())
                    written["records"] += 1
                row += 1
            i += 1
        if row != len(calls):
            raise ValueError(
                f"{out / READS}: {len(calls)} reads, the inputs hold {row} records; "
                "the results are not those of these inputs"
            )
    for other in (f"{VIRAL_READS}.fastq.gz", f"{VIRAL_READS}.fasta.gz"):
        if other != name:
            (out / other).unlink(missing_ok=True)
    return written
