"""FASTQ input: four-line records read in byte-range blocks, as :mod:`.fasta` reads FASTA.

A record is four lines: ``@title``, the sequence, ``+`` (optionally repeating the
title) and the qualities, exactly as long as the sequence.  That is what
sequencers and their converters write; a FASTQ file whose sequences are wrapped
over several lines is refused with the line where its third line is not ``+``.
The method does not use qualities: they are checked for length, then dropped.

* ``id`` is the title up to the first whitespace (as for FASTA and Biopython's
  ``record.id``); the sequence line loses trailing spaces and tabs only;
* lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r``; blank lines are accepted
  before the first record and after the last, nowhere else;
* problems are :class:`~virnuc_dask.errors.FastqFormatError` with file, line and record: a
  sequence and quality of different lengths, a missing ``+`` line, a truncated
  last record, a FASTA (``>``) record among FASTQ records, binary or non-UTF-8 text.

Blocks: because every record is four lines, a record starts on every fourth
line counted from the file's first record (``InputBlock.record_line``).  A block
owns the records whose ``@`` line starts in its byte range: it finds its first
line start, steps to the next record line using the line number at its start
(``InputBlock.first_line``, counted by :func:`.formats.plan_blocks`), and reads its
last record on past its end.  A gzip file (bgzip and multi-member included) is
one block, decompressed as a stream.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

from virnuc_dask.core.records import InputBlock, Record, lines_at
from virnuc_dask.errors import FastqFormatError

__all__ = ["first_record_line", "iter_fastq_gzip", "read_fastq_block"]

_SCAN = 16 * 2**20
_STRIP = b" \t"


def _normalise(data: bytes) -> bytes:
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data


def first_record_line(head: bytes) -> int:
    """1-based line of the first non-blank line of ``head`` (the file's first bytes)."""
    text = _normalise(head)
    stripped = text.lstrip()
    return 1 + text.count(b"\n", 0, len(text) - len(stripped))


def _title_id(title: bytes) -> str:
    words = title.decode("utf-8", "replace").split(None, 1)
    return words[0] if words else ""


def _check_text(data: bytes, path: str, line: int) -> None:
    """NUL bytes or text that is not UTF-8 in a normalised region starting at ``line``."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise FastqFormatError(
            path, line + data.count(b"\n", 0, nul), None, "binary data (NUL byte), not FASTQ text"
        )
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FastqFormatError(
                path,
                line + data.count(b"\n", 0, exc.start),
                None,
                f"not UTF-8 text (byte 0x{data[exc.start]:02x})",
            ) from None


def _parse(
    data: bytes,
    path: str,
    line: int,
    *,
    limit: int | None,
    final: bool,
) -> tuple[list[Record], int, int]:
    """Records of the normalised ``data`` (starting at a record line numbered ``line``).

    Stops before a record starting at or after byte ``limit``; when ``final`` is false,
    also before a record whose four lines are not all in ``data`` (more data follows).
    Returns (records, bytes consumed, line after the consumed bytes).
    """
    _check_text(data, path, line)
    records: list[Record] = []
    lines = data.split(b"\n")
    # A trailing element without "\n" is an unfinished line unless this is the end.
    complete = len(lines) - 1 if not final or not lines[-1] else len(lines)
    i, pos = 0, 0
    while i < complete:
        if limit is not None and pos >= limit:
            break
        head = lines[i]
        if not head.startswith(b"@"):
            if not head.strip(_STRIP):
                if not any(x.strip(_STRIP) for x in lines[i:]):
                    if final:
                        return records, len(data), line + complete - i
                    break
                raise FastqFormatError(path, line, None, "blank line inside FASTQ records")
            if head.startswith(b">"):
                raise FastqFormatError(
                    path, line, _title_id(head[1:]), "a FASTA record ('>' header) in a FASTQ file"
                )
            shown = head[:40].decode("utf-8", "backslashreplace")
            raise FastqFormatError(
                path, line, None, f"not FASTQ: expected an '@' header line, found {shown!r}"
            )
        title = head[1:]
        if i + 4 > complete:
            if not final:
                break
            raise FastqFormatError(
                path,
                line,
                _title_id(title),
                f"truncated record: {complete - i} of its 4 lines "
                "(header, sequence, '+', qualities) before the end of file",
            )
        seq, plus, qual = lines[i + 1].rstrip(_STRIP), lines[i + 2], lines[i + 3].rstrip(_STRIP)
        rid = _title_id(title)
        if not plus.startswith(b"+"):
            shown = plus[:40].decode("utf-8", "backslashreplace")
            raise FastqFormatError(
                path,
                line + 2,
                rid,
                f"missing '+' line: found {shown!r} (a FASTQ record is "
                "four lines: header, sequence, '+', qualities; wrapped sequences are not read)",
            )
        repeated = plus[1:].rstrip(_STRIP)
        if repeated and repeated != title.rstrip(_STRIP):
            raise FastqFormatError(
                path, line + 2, rid, "the '+' line repeats a different title than the '@' line"
            )
        if len(qual) != len(seq):
            raise FastqFormatError(
                path,
                line + 3,
                rid,
                f"sequence and quality lengths differ ({len(seq)} bases, "
                f"{len(qual)} quality values)",
            )
        records.append(Record(rid, seq.decode("utf-8"), path, line))
        for k in range(4):
            pos += len(lines[i + k]) + 1
        i += 4
        line += 4
    return records, min(pos, len(data)), line


def _line_start(data: bytes, prev: bytes) -> int:
    """Offset of the first line start in ``data`` (whose preceding byte is ``prev``)."""
    if prev == b"\n" or (prev == b"\r" and data[:1] != b"\n"):
        return 0
    if prev == b"\r":  # between the CR and LF of a CRLF
        return 1
    return _next_line(data, 0)


def _next_line(data: bytes, at: int) -> int:
    """Offset after the first line end at or after ``at`` (``len(data)`` if none)."""
    n = data.find(b"\n", at)
    r = data.find(b"\r", at, n if n >= 0 else len(data))
    if r >= 0:
        return r + 2 if data[r + 1 : r + 2] == b"\n" else r + 1
    return n + 1 if n >= 0 else len(data)


def _count_line_ends(data: bytes) -> int:
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def read_fastq_block(block: InputBlock) -> list[Record]:
    """The records whose ``@`` line starts in the plain-file ``block``, in file order."""
    path, start, stop = block.path, block.start, block.stop
    with open(path, "rb") as f:
        prev = b"\n"
        if start > 0:
            f.seek(start - 1)
            prev = f.read(1)
        data = f.read() if stop is None else f.read(max(stop - start, 0))
        if stop is not None:  # the last record's remaining lines (at most four more)
            extra = []
            while True:
                more = f.read(2**16)
                if not more:
                    break
                extra.append(more)
                if _count_line_ends(b"".join(extra)) >= 5:
                    break
            data_end = len(data)
            data += b"".join(extra)
        else:
            data_end = len(data)
    line = block.first_line if block.first_line is not None else lines_at(path, [start])[0]
    at = _line_start(data, prev)
    if at > 0 and prev != b"\r":
        line += 1  # ``line`` is that of the line holding ``start``
    # Step to the next record line (blank lines before the first record are skipped).
    while at < len(data) and (line < block.record_line or (line - block.record_line) % 4):
        nxt = _next_line(data, at)
        if line < block.record_line and data[at:nxt].strip():
            shown = data[at:nxt].strip()[:40].decode("utf-8", "backslashreplace")
            raise FastqFormatError(
                path, line, None, f"not FASTQ: expected an '@' header line, found {shown!r}"
            )
        at, line = nxt, line + 1
    if at >= data_end:
        return []
    region = data[at:]
    limit = len(_normalise(data[at:data_end]))
    records, _, _ = _parse(_normalise(region), path, line, limit=limit, final=True)
    return records


def iter_fastq_gzip(path: str) -> Iterator[list[Record]]:
    """Records of a gzip FASTQ file, decompressed as a stream, in batches."""
    buf, line, started = b"", 1, False
    with gzip.open(path, "rb") as g:
        while True:
            try:
                data = g.read(_SCAN)
            except (EOFError, OSError, zlib.error) as exc:
                raise FastqFormatError(
                    path, line, None, f"corrupt or truncated gzip data: {exc}"
                ) from exc
            final = not data
            buf += data
            hold = b""
            if not final and buf.endswith(b"\r"):
                buf, hold = buf[:-1], b"\r"  # maybe the first half of a CRLF
            buf = _normalise(buf)
            if not started:
                stripped = buf.lstrip()
                if not stripped and not final:
                    buf += hold
                    continue
                line += buf.count(b"\n", 0, len(buf) - len(stripped))
                buf, started = stripped, True
            records, used, line = _parse(buf, path, line, limit=None, final=final)
            if records:
                yield records
            buf = buf[used:] + hold
            if final:
                return
