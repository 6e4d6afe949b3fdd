"""ORF selection for training data, as VirNucPro builds its training sets (pure, no Dask).

Prediction keeps every stop-free frame of every chunk. Training (the original's
``identify_seq(..., istraindata=True)``) is stricter:

- a chunk holding any ambiguous base ``N R Y M K S W H B V D`` (after upper-casing) is
  dropped whole; other letters (``U``) only lose their codons, as in prediction;
- a stop-free frame is kept only when its protein occurs as a substring of a reference
  protein. The original looks only at the CDS translations annotated on the same GenBank
  record as the read; here the reference is one set of proteins (``--protein-reference``
  FASTA files) shared by all reads. Without a reference every stop-free frame is kept.

Ids, nucleotide slices and proteins of the kept frames are those of prediction
(:func:`virnuc_dask.core.translate.six_frame_orfs`).

>>> ref = ProteinReference(["MKKLLPA", "WWW"])
>>> select = TrainingSelection()
>>> [o.id for o in select("c", "ATGAAAAAA")]
['cF1', 'cF3', 'cR1', 'cR2', 'cR3']
>>> "KKL" in ref, "KKW" in ref
(True, False)
>>> training_orfs("c", "ATGNAAAAA", None)
[]
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence

import numpy as np

from virnuc_dask.core.formats import plan_blocks, read_block
from virnuc_dask.core.translate import Orf, six_frame_orfs

__all__ = ["AMBIGUOUS", "ProteinReference", "TrainingSelection", "load_reference", "training_orfs"]

#: The bases for which the original drops a training chunk.
AMBIGUOUS = frozenset("NRYMKSWHBVD")
_AMBIGUOUS_BYTES = bytes(sorted(ord(c) for c in AMBIGUOUS))

_K = 8  # k-mer length of the index: 8 bytes make one uint64 code
_SEPARATOR = b"\n"  # never part of a protein, so no match spans two proteins


class ProteinReference:
    """Reference proteins, answering "is ``protein`` a substring of one of them?".

    The proteins are joined into one byte string; every position's 8-mer is encoded as a
    ``uint64`` and sorted, so a query looks up the positions sharing its first 8
    residues (binary search) and compares only there. Memory: about 17 bytes per
    reference residue; a query costs ``log2(residues)`` plus one comparison per
    position that shares its first 8 residues. Queries shorter than 8 residues scan.
    """

    def __init__(self, proteins: Iterable[str]) -> None:
        text = _SEPARATOR.join(
            p.strip().upper().encode("ascii", "replace") for p in proteins if p.strip()
        )
        self.proteins = text.count(_SEPARATOR) + 1 if text else 0
        self.residues = len(text) - max(0, self.proteins - 1)
        self._text = text
        data = np.frombuffer(text, dtype=np.uint8)
        n = len(data) - _K + 1
        if n > 0:
            codes = np.zeros(n, dtype=np.uint64)
            for j in range(_K):
                codes |= data[j : j + n].astype(np.uint64) << np.uint64(8 * (_K - 1 - j))
            self._order = np.argsort(codes, kind="stable").astype(np.int64)
            self._codes = codes[self._order]
        else:
            self._order = np.zeros(0, dtype=np.int64)
            self._codes = np.zeros(0, dtype=np.uint64)

    def __contains__(self, protein: str) -> bool:
        query = protein.encode("ascii", "replace")
        if not query or _SEPARATOR in query:
            return bool(query == b"" and self.proteins)
        if len(query) < _K:
            return query in self._text
        code = np.uint64(int.from_bytes(query[:_K], "big"))
        lo = int(np.searchsorted(self._codes, code, side="left"))
        hi = int(np.searchsorted(self._codes, code, side="right"))
        text, m = self._text, len(query)
        return any(text[pos : pos + m] == query for pos in self._order[lo:hi].tolist())


@functools.lru_cache(maxsize=2)
def _cached_reference(
    paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]
) -> ProteinReference:
    proteins = (
        rec.sequence for block in plan_blocks(list(paths), 1 << 62) for rec in read_block(block)
    )
    return ProteinReference(proteins)


def load_reference(paths: Sequence[str]) -> ProteinReference:
    """The proteins of FASTA files (plain or gzip), cached per process while unchanged."""
    stamps = tuple((os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
    return _cached_reference(tuple(os.fspath(p) for p in paths), stamps)


def training_orfs(
    chunk_id: str, chunk_sequence: str, reference: ProteinReference | None
) -> list[Orf]:
    """The ORFs of one chunk that the original keeps for training (see the module doc)."""
    upper = chunk_sequence.upper()
    if upper.isascii():
        if len(upper.encode("ascii").translate(None, _AMBIGUOUS_BYTES)) != len(upper):
            return []
    elif any(base in AMBIGUOUS for base in upper):
        return []
    orfs = six_frame_orfs(chunk_id, upper)
    if reference is None:
        return orfs
    return [orf for orf in orfs if orf.protein in reference]


@dataclasses.dataclass(frozen=True)
class TrainingSelection:
    """Training-mode selection as a picklable callable ``(chunk_id, chunk) -> [Orf]``.

    ``protein_reference``: FASTA files of reference proteins, loaded once per process
    where the selection runs (a worker); empty: every stop-free frame is kept.
    """

    protein_reference: tuple[str, ...] = ()

    def __call__(self, chunk_id: str, chunk_sequence: str) -> list[Orf]:
        reference = load_reference(self.protein_reference) if self.protein_reference else None
        return training_orfs(chunk_id, chunk_sequence, reference)
