"""Paired-end reads: which input files are the two mates of a pair, the mate ids the
outputs use, and the check that the two files hold the same reads in the same order.

Illumina mates share the read id.  Casava 1.8 and later write it before a space and
the mate number in the comment (``@M00123:45:000:1:1:15589:1332 1:N:0:ATCACG`` and
``... 2:N:0:ATCACG``); older pipelines append ``/1`` and ``/2`` to the id.  Either
way every output names a mate ``<id>/1`` or ``<id>/2``:

>>> mate_id("M00123:45:000:1:1:15589:1332", 1), mate_id("read7/2", 2)
('M00123:45:000:1:1:15589:1332/1', 'read7/2')
>>> title_mate("M00123:45:000:1:1:15589:1332 2:N:0:ATCACG")
('M00123:45:000:1:1:15589:1332', 2)
>>> title_mate("read7/1"), title_mate("contig_3 len=512")
(('read7', 1), ('contig_3', None))

Two FASTQ inputs given one after the other are the mates of a pair when their first
records are mates: the same id, and no mate number or ``1`` then ``2``
(:func:`mate_layout`).  Reading then checks every record (:func:`first_mismatch`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from virnuc_dask.core.formats import read_block
from virnuc_dask.core.records import InputBlock
from virnuc_dask.errors import InputFormatError

_GZIP_MAGIC = b"\x1f\x8b"
_CASAVA = re.compile(r"([12]):[YN]:\d+(:|$)")
_HEAD = 2**14


def title_mate(title: str) -> tuple[str, int | None]:
    """(id without a mate suffix, mate number or None) of a FASTA/FASTQ title line."""
    words = title.split(None, 1)
    if not words:
        return "", None
    rid = words[0]
    if len(words) > 1:
        casava = _CASAVA.match(words[1])
        if casava:
            return rid, int(casava.group(1))
    if rid[-2:] in ("/1", "/2"):
        return rid[:-2], int(rid[-1])
    return rid, None


def mate_base(rid: str, mate: int) -> str:
    """The id of the pair for a read of mate file ``mate`` (its ``/mate`` suffix removed)."""
    return rid[:-2] if rid.endswith(f"/{mate}") else rid


def mate_id(rid: str, mate: int) -> str:
    """The id a read of mate file ``mate`` has in every output: ``<pair id>/<mate>``."""
    return f"{mate_base(rid, mate)}/{mate}"


def _head(path: str) -> bytes | None:
    """The first bytes of a plain or gzip file (decompressed); None when it cannot be
    read (reading it later says why)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD)
        if head[:2] == _GZIP_MAGIC:
            with gzip.open(path, "rb") as fh:
                head = fh.read(_HEAD)
    except (OSError, EOFError, zlib.error):
        return None
    return head


def first_title(path: str) -> tuple[str, str] | None:
    """(``"fasta"``/``"fastq"``, title) of the first record of a plain or gzip file;
    None when the file holds none (or cannot be read: reading it later says why)."""
    head = _head(path)
    if head is None:
        return None
    for line in head.replace(b"\r", b"\n").split(b"\n"):
        if line.strip():
            kind = {b"@": "fastq", b">": "fasta"}.get(line[:1])
            if kind is None:
                return None
            return kind, line[1:].decode("utf-8", "replace").strip()
    return None


def are_mates(first: tuple[str, str] | None, second: tuple[str, str] | None) -> bool:
    """Whether two files whose first records are ``first`` and ``second`` (as
    :func:`first_title` gives them) are mate 1 and mate 2 of paired FASTQ."""
    if first is None or second is None or first[0] != "fastq" or second[0] != "fastq":
        return False
    (id1, m1), (id2, m2) = title_mate(first[1]), title_mate(second[1])
    return id1 == id2 and m1 in (1, None) and m2 in (2, None) and (m1 is None) == (m2 is None)


def mate_layout(paths: Sequence[str]) -> list[int | None]:
    """The mate number of each input (None: not one of a pair), pairing each FASTQ file
    with the next one when their first records are mates.

    A file whose first record says mate 2 is never the first of a pair.
    """
    titles = [first_title(p) for p in paths]
    layout: list[int | None] = [None] * len(paths)
    i = 0
    while i + 1 < len(paths):
        if are_mates(titles[i], titles[i + 1]):
            layout[i], layout[i + 1] = 1, 2
            i += 2
        else:
            i += 1
    return layout


def check_mate_order(paths: Sequence[str]) -> None:
    """Raise :class:`InputFormatError` where a FASTQ file whose first read says mate 1
    (``1:N:…`` or ``/1``) is followed by one whose first read says mate 2 but is not
    its mate: R1 and R2 given out of order, or of two samples. Without this check the
    two files would be read as unrelated single-end files, and every mate-2 read would
    be dropped as a duplicate read id."""
    titles = [first_title(p) for p in paths]
    for i in range(len(paths) - 1):
        first, second = titles[i], titles[i + 1]
        if first is None or second is None or first[0] != "fastq" or second[0] != "fastq":
            continue
        (id1, m1), (id2, m2) = title_mate(first[1]), title_mate(second[1])
        if m1 == 1 and m2 == 2 and id1 != id2:
            raise InputFormatError(
                paths[i + 1],
                _first_record_line(paths[i + 1]),
                id2,
                f"the first read is mate 2 but not the mate of the first read of "
                f"{paths[i]} ('{id1}'): the mate files are out of order or of two "
                "different samples; give both files of one sample, R1 then R2, each in "
                "the same read order",
            )


def _first_record_line(path: str) -> int | None:
    """The 1-based line of the first record of a plain or gzip file."""
    for n, line in enumerate((_head(path) or b"").split(b"\n"), start=1):
        if line.strip():
            return n
    return None


@dataclass(frozen=True)
class MatePair:
    """Two mate files: ``first`` and ``second`` are indexes into a run's inputs."""

    first: int
    second: int


def mate_pairs(layout: Sequence[int | None]) -> list[MatePair]:
    """The pairs of a :func:`mate_layout`, in input order."""
    return [MatePair(i, i + 1) for i, m in enumerate(layout) if m == 1]


def pair_hashes(read_ids: Sequence[str], mate: int) -> np.ndarray:
    """64-bit hashes of the pair ids of a mate file's reads (to compare the two files)."""
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(mate_base(r, mate).encode(), digest_size=8).digest(), "little"
            )
            for r in read_ids
        ],
        dtype=np.uint64,
    )


def first_mismatch(first: np.ndarray, second: np.ndarray) -> int | None:
    """Position of the first read whose mate differs (or is missing), or None."""
    n = min(len(first), len(second))
    differ = np.flatnonzero(first[:n] != second[:n])
    if len(differ):
        return int(differ[0])
    return None if len(first) == len(second) else n


def with_mates(blocks: Sequence[InputBlock], layout: Sequence[int | None]) -> list[InputBlock]:
    """``blocks`` (of the inputs, in order, as ``plan_blocks`` cuts them) with the mate
    number of their input; ``layout`` as :func:`mate_layout` gives it."""
    out, k = [], -1
    for block in blocks:
        k += block.start == 0
        out.append(dataclasses.replace(block, mate=layout[k]) if layout[k] else block)
    return out


def input_of_blocks(blocks: Sequence[InputBlock]) -> list[int]:
    """For each block, the position of its input among the run's inputs."""
    out, k = [], -1
    for block in blocks:
        k += block.start == 0
        out.append(k)
    return out


@dataclass(frozen=True)
class PairRows:
    """Where a pair's mates are among a run's reads (input order): ``n`` reads of mate 1
    from read ``first``, their mates from read ``second``."""

    first: int
    second: int
    n: int


def check_mates(
    blocks: Sequence[InputBlock],
    hashes: Sequence[np.ndarray],
    pairs: Sequence[MatePair],
) -> list[PairRows]:
    """The rows of every pair, once checked that both files hold the same reads in the
    same order; ``hashes``: per block, :func:`pair_hashes` of its reads.

    Raises :class:`InputFormatError` naming the file, line and record of the first read
    whose mate is missing or differs.
    """
    inputs = input_of_blocks(blocks)
    starts = np.cumsum([0] + [len(h) for h in hashes])
    rows = []
    for pair in pairs:
        mine = {
            m: [b for b, i in enumerate(inputs) if i == k]
            for m, k in ((1, pair.first), (2, pair.second))
        }
        joined = {
            m: np.concatenate([hashes[b] for b in bs]) if bs else np.zeros(0, np.uint64)
            for m, bs in mine.items()
        }
        k = first_mismatch(joined[1], joined[2])
        if k is not None:
            raise _mate_error(blocks, hashes, mine, k)
        rows.append(PairRows(int(starts[mine[1][0]]), int(starts[mine[2][0]]), len(joined[1])))
    return rows


def _record_at(blocks, hashes, mine: list[int], k: int):
    """The ``k``-th read of the blocks ``mine`` (None past their end), read again."""
    for b in mine:
        if k < len(hashes[b]):
            return read_block(blocks[b])[k]
        k -= len(hashes[b])
    return None


def _mate_error(blocks, hashes, mine: dict[int, list[int]], k: int) -> InputFormatError:
    rec1 = _record_at(blocks, hashes, mine[1], k)
    rec2 = _record_at(blocks, hashes, mine[2], k)
    path1, path2 = blocks[mine[1][0]].path, blocks[mine[2][0]].path
    if rec2 is None:
        return InputFormatError(
            rec1.path,
            rec1.line,
            rec1.id,
            f"no mate: {path2} ends after {k} reads, this file (mate 1) has more; "
            "the two files of a pair must hold the same reads in the same order",
        )
    if rec1 is None:
        return InputFormatError(
            rec2.path,
            rec2.line,
            rec2.id,
            f"no mate: {path1} ends after {k} reads, this file (mate 2) has more; "
            "the two files of a pair must hold the same reads in the same order",
        )
    return InputFormatError(
        rec2.path,
        rec2.line,
        rec2.id,
        f"mates out of order: read {k + 1} of this file (mate 2) is not the mate of read "
        f"{k + 1} of {path1} ('{rec1.id}', line {rec1.line}); the two files of a pair must "
        "hold the same reads in the same order",
    )


NO_READS = np.zeros(0, np.uint64)


def read_prefix(blocks: Sequence[int], read: Mapping[int, object]) -> list[int]:
    """The blocks of ``blocks`` (one file's, in order) read without a gap from the first.

    >>> read_prefix([5, 6, 7, 8], {6: 0, 7: 0}), read_prefix([5, 6, 7], {5: 0, 7: 0})
    ([], [5])
    """
    prefix = []
    for b in blocks:
        if b not in read:
            break
        prefix.append(b)
    return prefix


def check_mates_so_far(
    blocks: Sequence[InputBlock],
    hashes: Mapping[int, np.ndarray],
    pairs: Sequence[MatePair],
) -> None:
    """Check the reads of both mate files read so far (``hashes``: per block read, in
    any order, :func:`pair_hashes` of its reads): raises as
    :func:`check_mates` for the first read, among those both files have given, whose
    mate differs. Once every block is read, :func:`check_mates` also checks the counts.
    """
    inputs = input_of_blocks(blocks)
    for pair in pairs:
        mine = {
            m: [b for b, i in enumerate(inputs) if i == k]
            for m, k in ((1, pair.first), (2, pair.second))
        }
        # Blocks are read in parallel: only a file's blocks read from its first one on,
        # without a gap, give its reads so far.
        joined = {
            m: np.concatenate([hashes[b] for b in read_prefix(bs, hashes)] or [NO_READS])
            for m, bs in mine.items()
        }
        n = min(len(joined[1]), len(joined[2]))
        differ = np.flatnonzero(joined[1][:n] != joined[2][:n])
        if len(differ):
            raise _mate_error(blocks, hashes, mine, int(differ[0]))
