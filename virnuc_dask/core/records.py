"""What input files are read into: byte-range blocks and records (FASTA and FASTQ alike)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["InputBlock", "Record", "count_line_ends", "lines_at"]

_SCAN = 16 * 2**20  # bytes per read when counting lines


@dataclass(frozen=True)
class InputBlock:
    """Byte range ``[start, stop)`` of one input file (``stop`` None: to the end of file).

    ``first_line`` is the 1-based line number at ``start`` (1 + line ends that
    begin before ``start``), filled in by ``plan_blocks``.  ``format``: ``"fasta"`` or
    ``"fastq"`` (of the whole file, from its content); ``record_line``: the line of the
    file's first FASTQ record (see :mod:`.fastq`); ``mate``: 1 or 2 when the file holds
    one mate of paired reads (its reads are named ``<id>/<mate>``, see :mod:`.pairs`).
    """

    path: str
    index: int
    start: int
    stop: int | None
    first_line: int | None = None
    format: str = "fasta"
    record_line: int = 1
    mate: int | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """One FASTA or FASTQ record; ``line`` is the 1-based line of its header (decompressed file)."""

    id: str
    sequence: str
    path: str
    line: int


def count_line_ends(data: bytes, after_cr: bool = False) -> int:
    """Line ends (LF, CRLF, lone CR) in ``data``; ``after_cr``: ``data`` follows a CR."""
    n = data.count(b"\n")
    cr = data.count(b"\r")
    if cr:
        n += cr - data.count(b"\r\n")
    if after_cr and data[:1] == b"\n":
        n -= 1  # the CR before ``data`` already counted this CRLF
    return n


def lines_at(path: str, offsets: Sequence[int]) -> list[int]:
    """Line number at each (ascending) byte offset: 1 + line ends beginning before it."""
    lines, count, pos, after_cr = [], 0, 0, False
    with open(path, "rb") as f:
        for offset in offsets:
            while pos < offset:
                data = f.read(min(_SCAN, offset - pos))
                if not data:
                    break
                count += count_line_ends(data, after_cr)
                after_cr, pos = data[-1:] == b"\r", pos + len(data)
            lines.append(count + 1)
    return lines
