"""Input formats: which one a file holds (from its content, never its name), and the reader
of each. Every format is one entry of :data:`FORMATS`; the rest iterates over it.

A format names the first character of its records (``>`` FASTA, ``@`` FASTQ), the line
of a file's first record (checking what comes before it), the reader of a byte range of
a plain file and the reader of a whole gzip file (one block, decompressed as a stream).
:func:`plan_blocks` cuts files into :class:`~virnuc_dask.core.records.InputBlock` s that
carry their file's format; :func:`read_block` reads one with its format's reader. An
empty or blank file counts as FASTA (no records); a file that is neither is refused as
FASTA, with the text before the first header.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "reads"
>>> _ = path.write_text("@r1\\nACGT\\n+\\nIIII\\n")
>>> [block] = plan_blocks([str(path)])
>>> block.format, [(r.id, r.sequence) for r in read_block(block)]
('fastq', [('r1', 'ACGT')])
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import os
import stat
import zlib
from collections.abc import Callable, Sequence

from virnuc_dask.core import fasta, fastq
from virnuc_dask.core.records import InputBlock, Record, lines_at
from virnuc_dask.errors import FastaFormatError
from virnuc_dask.files import GZIP_MAGIC, is_gzip

__all__ = ["FORMATS", "InputFormat", "check_input", "inspect_input", "plan_blocks", "read_block"]

HEAD = 2**16  # bytes looked at (decompressed) to tell the format


@dataclasses.dataclass(frozen=True)
class InputFormat:
    """One input format: ``marker``, the first character of its records; ``first_record``:
    given the path and the file's first bytes, the line of its first record (raises the
    format's error when what comes first is not one); ``read_plain``: the records of a
    block of a plain file; ``read_gzip``: the records of a whole gzip file."""

    name: str
    marker: bytes
    first_record: Callable[[str, bytes], int]
    read_plain: Callable[[InputBlock], list[Record]]
    read_gzip: Callable[[str], list[Record]]


FORMATS: tuple[InputFormat, ...] = (
    InputFormat("fasta", b">", fasta.first_record_line, fasta.read_plain, fasta.read_gzip),
    InputFormat(
        "fastq",
        b"@",
        lambda path, head: fastq.first_record_line(head),
        fastq.read_fastq_block,
        lambda path: [rec for batch in fastq.iter_fastq_gzip(path) for rec in batch],
    ),
)
DEFAULT = FORMATS[0]  # what an empty file, or one of no known format, is read as
BY_NAME = {f.name: f for f in FORMATS}


def detect(head: bytes) -> InputFormat:
    """The format whose records start the text ``head`` (after blank lines)."""
    first = head.lstrip()[:1]
    return next((f for f in FORMATS if f.marker == first), DEFAULT)


def plan_blocks(paths: Sequence[str], blocksize: int = 64 * 2**20) -> list[InputBlock]:
    """Blocks of all files, ``index`` consecutive over files; checks each file's start.

    Raises ``FileNotFoundError`` for a missing path and ``FastaFormatError`` for a
    directory, an unreadable file, a corrupt gzip start or text before the first header.
    """
    if isinstance(paths, str | bytes | os.PathLike):
        raise TypeError("paths must be a sequence of paths, not a single path")
    if blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    blocks: list[InputBlock] = []
    for raw in paths:
        path = os.fspath(raw)
        size, compressed, fmt, record_line = inspect_input(path)
        if compressed:
            blocks.append(InputBlock(path, len(blocks), 0, None, 1, fmt, record_line))
            continue
        starts = list(range(0, max(size, 1), blocksize))
        for i, (start, line) in enumerate(zip(starts, lines_at(path, starts), strict=True)):
            stop = starts[i + 1] if i + 1 < len(starts) else None
            blocks.append(InputBlock(path, len(blocks), start, stop, line, fmt, record_line))
    return blocks


def check_input(path: str) -> tuple[int, bool]:
    """(size, is gzip) of a readable regular file whose start is a known format's.

    Reads at most the first 64 KiB (decompressed): a quick check before a run starts.
    Raises ``FileNotFoundError`` or ``FastaFormatError`` as :func:`plan_blocks`.
    """
    size, compressed, _, _ = inspect_input(path)
    return size, compressed


def inspect_input(path: str) -> tuple[int, bool, str, int]:
    """(size, is gzip, format name, line of the first record) of an input; raises as
    :func:`check_input`."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "FASTA input not found", path) from None
    if stat.S_ISDIR(info.st_mode):
        raise FastaFormatError(path, None, None, "is a directory, not a FASTA file")
    if not stat.S_ISREG(info.st_mode):
        raise FastaFormatError(path, None, None, "is not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD)
    except OSError as exc:
        raise FastaFormatError(path, None, None, f"cannot be read: {exc.strerror or exc}") from exc
    compressed = head[:2] == GZIP_MAGIC
    if compressed:
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(HEAD)
        except (EOFError, OSError, zlib.error) as exc:
            raise fasta.gzip_error(path, 1, exc) from exc
    fmt = detect(head)
    return info.st_size, compressed, fmt.name, fmt.first_record(path, head)


def read_block(block: InputBlock) -> list[Record]:
    """The records whose header line starts in ``block`` (``[]`` if none), in file order."""
    fmt = BY_NAME[block.format]
    if block.start == 0 and block.stop is None and is_gzip(block.path):
        return fmt.read_gzip(block.path)
    return fmt.read_plain(block)
