"""FASTA input read in byte-range blocks, record for record what Biopython's parser gives.

Which format a file holds, and the blocks it is cut into, are :mod:`.formats`'; FASTQ
is read by :mod:`.fastq`.

:func:`.formats.plan_blocks` cuts plain files into ~``blocksize`` byte ranges (a gzip
file, recognised by its magic bytes, is always one whole-file block);
:func:`read_plain` parses one range in whichever process runs it.  A record belongs to the block
in which the ``>`` of its header line lies; the last record of a block is read
on past the block end up to the next header line.

Records equal ``[(r.id, str(r.seq)) for r in Bio.SeqIO.parse(path, "fasta")]``
(Biopython 1.88), which means:

* lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (Python's universal
  newlines, as Biopython reads in text mode); a header line is one whose first
  character is ``>``;
* ``id`` is the title up to the first whitespace (``str.split()``: space, tab,
  vertical tab, form feed, unicode spaces ...); an empty title gives ``""``;
* the sequence is the following lines joined with only space, tab, CR and LF
  removed; case and every other character are kept.

Differences: leading blank lines are accepted (Biopython refuses any text
before the first ``>``, even an empty line); NUL bytes and text that is not
UTF-8 are errors.  Other content before the first header is an error
(``not FASTA``).  An empty or whitespace-only file gives no records and no error:
the caller decides.  Per-record oddities (empty sequence, non-IUPAC letters,
duplicate ids) are not errors either: see ``record_problem``.

Line numbers: ``plan_blocks`` reads each plain file once, counting line ends
up to every block start (``bytes.count`` runs at memory speed, so this costs
one sequential read of the file, about as long as copying it).  Counting in
each block from the file start instead would read ``O(size**2 / blocksize)``
bytes (3 TB for a 20 GB file in 64 MB blocks).  A block built by hand without
``first_line`` is still read correctly; it counts its own prefix.
"""

from __future__ import annotations

import gzip
import zlib

from virnuc_dask.core.records import (
    InputBlock,
    Record,
)
from virnuc_dask.core.records import (
    count_line_ends as _count_line_ends,
)
from virnuc_dask.core.records import (
    lines_at as _lines_at,
)
from virnuc_dask.errors import FastaFormatError

__all__ = [
    "FastaFormatError",
    "Record",
    "first_record_line",
    "read_gzip",
    "read_plain",
    "record_problem",
]

_SCAN = 16 * 2**20  # bytes per read when counting lines or decompressing
_IUPAC = b"ACGTUNRYKMSWBDHVacgtunrykmswbdhv"


def record_problem(record: Record) -> str | None:
    """Why the record cannot be used (empty, non-IUPAC characters), or None if it can.

    Allowed: IUPAC nucleotide codes ``ACGTUNRYKMSWBDHV`` in either case.  Short
    reads are fine (the original keeps reads under 3 bp; they just give no ORF).
    """
    seq = record.sequence
    if not seq:
        return "empty sequence"
    if seq.isascii():
        bad = seq.encode("ascii").translate(None, _IUPAC).decode("ascii")
    else:
        allowed = _IUPAC.decode("ascii")
        bad = "".join(c for c in seq if c not in allowed)
    if not bad:
        return None
    distinct = list(dict.fromkeys(bad))
    shown = ",".join(repr(c) for c in distinct[:5])
    if len(distinct) > 5:
        shown += f",... ({len(distinct)} distinct)"
    return f"contains characters that are not IUPAC nucleotide codes: {shown}"


# --------------------------------------------------------------------------- reading


def first_record_line(path: str, head: bytes) -> int:
    """The line of the first record of a FASTA file whose first bytes are ``head`` (1:
    blank lines before it do not count); ``FastaFormatError`` for other text there."""
    h = _find_header(head)
    preamble = head if h < 0 else head[:h]
    if preamble.strip():
        raise _not_fasta(path, preamble, 1)
    return 1


def read_plain(block: InputBlock) -> list[Record]:
    """The records whose header line starts in ``block`` of a plain file, in file order."""
    with open(block.path, "rb") as f:
        return _read_plain(f, block)


def _read_plain(f, block: InputBlock) -> list[Record]:
    path, start, stop = block.path, block.start, block.stop
    if start > 0:
        f.seek(start - 1)
        prev = f.read(1)
    else:
        f.seek(0)
        prev = b"\n"
    data = f.read() if stop is None else f.read(max(stop - start, 0))
    h = _find_header(data, at_line_start=prev in (b"\n", b"\r"))
    if start == 0:
        preamble = data if h < 0 else data[:h]
        if preamble.strip():
            raise _not_fasta(path, preamble, 1)
        if h < 0:
            if stop is not None:
                _check_blank_until_header(f, path, data)
            return []
    elif h < 0:
        return []
    first_line = block.first_line
    if first_line is None:
        first_line = _lines_at(path, [start])[0]
    line = first_line + _count_line_ends(data[:h], prev == b"\r")
    if stop is not None:
        data += _read_until_header(f, data[-1:])
    return _parse(data[h:], path, line)


def _read_until_header(f, prev: bytes) -> bytes:
    """Bytes from the file position up to (excluding) the next header line or EOF."""
    parts, size = [], 2**16
    while True:
        data = f.read(size)
        if not data:
            return b"".join(parts)
        h = _find_header(prev + data, lo=1, at_line_start=False)
        if h >= 0:
            parts.append(data[: h - 1])
            return b"".join(parts)
        parts.append(data)
        prev, size = data[-1:], min(size * 2, _SCAN)


def _check_blank_until_header(f, path: str, data: bytes) -> None:
    """First block held only blank lines: what follows must start with a header line."""
    line, prev = 1 + _count_line_ends(data), data[-1:]
    while chunk := f.read(2**16):
        text = chunk.lstrip()
        if text:
            k = len(chunk) - len(text)
            before = chunk[k - 1 : k] if k else prev
            if text[:1] == b">" and before in (b"\n", b"\r"):
                return
            raise _not_fasta(path, text, line + _count_line_ends(chunk[:k], prev == b"\r"))
        line += _count_line_ends(chunk, prev == b"\r")
        prev = chunk[-1:]


def read_gzip(path: str) -> list[Record]:
    """Stream-decompress a whole file, parsing complete records as they arrive."""
    records: list[Record] = []
    buf, line, started = bytearray(), 1, False
    with gzip.open(path, "rb") as g:
        while True:
            try:
                data = g.read(_SCAN)
            except (EOFError, OSError, zlib.error) as exc:
                raise gzip_error(path, line, exc) from exc
            if not data:
                break
            searched = max(len(buf) - 1, 1)
            buf += data
            if not started:
                h = _find_header(buf)
                if buf[: h if h >= 0 else len(buf)].strip():
                    raise _not_fasta(path, bytes(buf[:h] if h >= 0 else buf), 1)
                if h < 0:
                    continue
                line += _count_line_ends(buf[:h])
                del buf[:h]
                started, searched = True, 1
            cut = _rfind_header(buf, searched)
            if cut > 0:
                region = bytes(buf[:cut])
                records += _parse(region, path, line)
                line += _count_line_ends(region)
                del buf[:cut]
    if started:
        records += _parse(bytes(buf), path, line)
    return records


def _find_header(buf: bytes | bytearray, lo: int = 0, at_line_start: bool = True) -> int:
    """Index of the first ``>`` at a line start at or after ``lo``, or -1.

    ``at_line_start``: whether index 0 is at a line start.
    """
    if lo == 0 and at_line_start and buf[:1] == b">":
        return 0
    lo = max(lo, 1) - 1
    i = buf.find(b"\n>", lo)
    j = buf.find(b"\r>", lo, len(buf) if i < 0 else i + 1)
    best = i if j < 0 else j if i < 0 else min(i, j)
    return best + 1 if best >= 0 else -1


def _rfind_header(buf: bytes | bytearray, lo: int) -> int:
    """Index of the last ``>`` at a line start at or after ``lo`` (>= 1), or -1."""
    i = buf.rfind(b"\n>", lo - 1)
    j = buf.rfind(b"\r>", max(i, lo - 1))
    best = max(i, j)
    return best + 1 if best >= 0 else -1


def _parse(region: bytes, path: str, line: int) -> list[Record]:
    """Records of ``region``: starts with a header line (or is empty), ends at a record end."""
    if b"\r" in region:
        region = region.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    nul = region.find(b"\x00")
    if nul >= 0:
        raise _located(region, nul, path, line, "binary data (NUL byte), not FASTA text")
    ascii_only = region.isascii()
    if not ascii_only:
        try:
            region.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = region[exc.start]
            raise _located(
                region, exc.start, path, line, f"not UTF-8 text (byte 0x{bad:02x})"
            ) from None
    if not region:
        return []
    codec = "ascii" if ascii_only else "utf-8"
    records = []
    for part in region[1:].split(b"\n>"):  # the region starts with '>'
        title, _, sequence = part.partition(b"\n")
        words = title.decode(codec).split(None, 1)
        records.append(
            Record(
                words[0] if words else "",
                sequence.translate(None, b" \t\n").decode(codec),
                path,
                line,
            )
        )
        line += part.count(b"\n") + 1
    return records


# --------------------------------------------------------------------------- errors


def _located(region: bytes, index: int, path: str, line: int, problem: str) -> FastaFormatError:
    """Error at byte ``index`` of a normalised region that starts with a header line."""
    header = region.rfind(b"\n>", 0, index) + 1
    eol = region.find(b"\n", header)
    title = region[header + 1 : eol if eol >= 0 else len(region)]
    words = title.decode("utf-8", "replace").split(None, 1)
    return FastaFormatError(
        path, line + region.count(b"\n", 0, index), words[0] if words else "", problem
    )


def _not_fasta(path: str, text: bytes, line: int) -> FastaFormatError:
    """Error for content before the first header; ``text`` starts at ``line`` (blank lines ok)."""
    stripped = text.lstrip()
    line += _count_line_ends(text[: len(text) - len(stripped)])
    first = stripped.replace(b"\r", b"\n").split(b"\n", 1)[0][:40]
    shown = first.decode("utf-8", "backslashreplace")
    return FastaFormatError(
        path, line, None, f"not FASTA: expected a '>' header line, found {shown!r}"
    )


def gzip_error(path: str, line: int, exc: BaseException) -> FastaFormatError:
    return FastaFormatError(path, line, None, f"corrupt or truncated gzip data: {exc}")
