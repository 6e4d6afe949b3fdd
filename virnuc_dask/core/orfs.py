"""The ORF table of one input block: reads -> chunks -> six-frame ORFs (pure, no Dask).

>>> from virnuc_dask.core.fasta import Record
>>> table = orfs_from_records([Record("r1", "ATGAAACCC", "in.fa", 1)], chunk_size=300)
>>> [o.id for o in table.orfs], table.reads[0].orfs
(['r1_chunk_1F1', 'r1_chunk_1F3', 'r1_chunk_1R1', 'r1_chunk_1R2', 'r1_chunk_1R3'], 5)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from virnuc_dask.core.chunking import chunk_record
from virnuc_dask.core.fasta import Record, record_problem
from virnuc_dask.core.formats import read_block
from virnuc_dask.core.pairs import mate_id
from virnuc_dask.core.records import InputBlock
from virnuc_dask.core.translate import Orf, six_frame_orfs


@dataclasses.dataclass(frozen=True, slots=True)
class ReadInfo:
    """One input read as the outputs report it."""

    id: str
    length: int
    chunks: int
    orfs: int
    path: str
    line: int
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class BlockOrfs:
    """Reads of one block (input order) and their ORFs (input order: chunk, then frame)."""

    block: int
    reads: list[ReadInfo]
    orfs: list[Orf]

    def without_reads(self, excluded: dict[int, str]) -> BlockOrfs:
        """A copy in which the reads at the given positions are failed with the given reasons."""
        if not excluded:
            return self
        reads, orfs, pos = [], [], 0
        for i, read in enumerate(self.reads):
            if i in excluded:
                reads.append(dataclasses.replace(read, chunks=0, orfs=0, problem=excluded[i]))
            else:
                reads.append(read)
                orfs.extend(self.orfs[pos : pos + read.orfs])
            pos += read.orfs
        return BlockOrfs(self.block, reads, orfs)


#: ``select(chunk_id, chunk_sequence) -> [Orf]``: which frames of a chunk become ORFs.
#: Prediction keeps every stop-free frame; training selects more strictly
#: (:class:`virnuc_dask.core.training_orfs.TrainingSelection`).
Selection = Callable[[str, str], list[Orf]]


def orfs_from_records(
    records: Iterable[Record], chunk_size: int, block: int = 0, select: Selection = six_frame_orfs
) -> BlockOrfs:
    """Chunk and translate every acceptable record; records with a problem keep no ORF."""
    reads: list[ReadInfo] = []
    orfs: list[Orf] = []
    for rec in records:
        problem = record_problem(rec)
        if problem is not None:
            reads.append(ReadInfo(rec.id, len(rec.sequence), 0, 0, rec.path, rec.line, problem))
            continue
        before = len(orfs)
        chunks = chunk_record(rec.id, rec.sequence, chunk_size)
        for chunk_id, chunk_seq in chunks:
            orfs.extend(select(chunk_id, chunk_seq))
        reads.append(
            ReadInfo(rec.id, len(rec.sequence), len(chunks), len(orfs) - before, rec.path, rec.line)
        )
    return BlockOrfs(block, reads, orfs)


def read_orfs(block: InputBlock, chunk_size: int, select: Selection = six_frame_orfs) -> BlockOrfs:
    """Read one FASTA block and build its ORF table (mates named ``<id>/<mate>``)."""
    records = read_block(block)
    if block.mate is not None:
        records = [Record(mate_id(r.id, block.mate), r.sequence, r.path, r.line) for r in records]
    return orfs_from_records(records, chunk_size, block.index, select)


def content_hashes(texts: Sequence[str]) -> np.ndarray:
    """``[n, 2]`` uint64: the 128-bit BLAKE2b digest of each text's UTF-8 bytes.

    Wide enough that no two of 10^9 distinct inputs share one (chance < 10^-20).
    """
    out = np.empty((len(texts), 2), dtype=np.uint64)
    buf = b"".join(hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts)
    out.reshape(-1)[:] = np.frombuffer(buf, dtype="<u8")
    return out


def id_hashes(table: BlockOrfs) -> np.ndarray:
    """64-bit hashes of the read ids, to find duplicates across blocks without moving ids."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(r.id.encode(), digest_size=8).digest(), "little")
            for r in table.reads
        ],
        dtype=np.uint64,
    )
