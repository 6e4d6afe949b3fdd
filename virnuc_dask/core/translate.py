"""Six-frame translation and ORF selection exactly as VirNucPro does it.

Per chunk the original (``translate_dna`` + ``identify_seq``) upper-cases the
sequence, translates frames F1-F3 (offsets 0, 1, 2) and R1-R3 (the same offsets
on the reverse complement, which swaps only A/C/G/T), reads codons while three
bases remain, drops every codon holding a letter other than A/C/G/T (no ``X``),
and keeps a frame when its protein is non-empty and has no ``*``.  The
nucleotide written for an ORF is ``frame_seq[f : f + 3 * len(protein) + 1]``:
one base past the last codon, and no longer aligned with the protein when
codons were dropped.

Speed: instead of one dict lookup per codon, every base is mapped to a digit
0-4 (4 = not ACGT) with ``bytes.translate``; the digit strings at offsets 0, 1, 2
are read as big base-256 integers and combined as ``25*a + 5*b + c``, so each
byte of the result is the codon index of one position (<= 124, no carries);
one more ``bytes.translate`` turns codon indices into amino acids (``-`` for an
ambiguous codon) and ``aa[f::3]`` is frame ``f``.  All of this runs in C; see
``benchmarks/bench_translate.py`` (about 10x the original's speed).  Input that
is not ASCII after upper-casing takes a plain per-codon path with the same
semantics.

>>> [(o.id, o.nucleotide, o.protein) for o in six_frame_orfs("c", "atgNaaaTGgc")][:2]
[('cF1', 'ATGNAAA', 'MM'), ('cF2', 'TGNAAAT', 'KW')]
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FRAMES", "Orf", "reverse_complement", "six_frame_orfs"]

FRAMES = ("F1", "F2", "F3", "R1", "R2", "R3")

_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
#: The standard code as the original spells it out (64 codons, upper case).
CODON_TABLE: dict[str, str] = {
    a + b + c: _AMINO[16 * i + 4 * j + k]
    for i, a in enumerate(_BASES)
    for j, b in enumerate(_BASES)
    for k, c in enumerate(_BASES)
}

_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")
_COMPLEMENT_BYTES = bytes.maketrans(b"ACGT", b"TGCA")  # input is upper case there


def _digit_table() -> bytes:
    table = bytearray([4]) * 256
    for i, base in enumerate(_BASES.encode()):
        table[base] = i
    return bytes(table)


def _amino_table() -> bytes:
    table = bytearray(b"-") * 256
    for codon, amino in CODON_TABLE.items():
        a, b, c = (_BASES.index(x) for x in codon)
        table[25 * a + 5 * b + c] = ord(amino)
    return bytes(table)


_DIGITS = _digit_table()
_AMINO_BY_INDEX = _amino_table()


@dataclass(frozen=True, slots=True)
class Orf:
    """One open reading frame of a chunk: ``id`` is the chunk id plus the frame name."""

    id: str
    nucleotide: str
    protein: str


def reverse_complement(seq: str) -> str:
    """Reverse complement swapping only ``ACGTacgt`` (``N``, IUPAC codes, ``U`` stay)."""
    return seq.translate(_COMPLEMENT)[::-1]


def _amino_per_position(seq: bytes) -> bytes:
    """Amino acid (or ``-``) of the codon starting at each position ``0 .. len - 3``."""
    digits = seq.translate(_DIGITS)
    from_bytes = int.from_bytes
    index = (
        from_bytes(digits[:-2], "big") * 25
        + from_bytes(digits[1:-1], "big") * 5
        + from_bytes(digits[2:], "big")
    )
    return index.to_bytes(len(seq) - 2, "big").translate(_AMINO_BY_INDEX)


def _frame_orfs(
    chunk_id: str, names: tuple[str, str, str], seq: bytes, text: str | None, out: list[Orf]
) -> None:
    aminos = _amino_per_position(seq)
    for f in range(3):
        protein = aminos[f::3]
        if b"*" in protein:
            continue
        if b"-" in protein:
            protein = protein.replace(b"-", b"")
        if protein:
            if text is None:
                text = seq.decode("ascii")
            out.append(
                Orf(
                    chunk_id + names[f], text[f : f + 3 * len(protein) + 1], protein.decode("ascii")
                )
            )


def _six_frame_orfs_text(chunk_id: str, seq: str) -> list[Orf]:
    """Per-codon path for non-ASCII input (``seq`` already upper-cased)."""
    out = []
    for strand, names in ((seq, FRAMES[:3]), (reverse_complement(seq), FRAMES[3:])):
        for f in range(3):
            protein = "".join(
                CODON_TABLE.get(strand[i : i + 3], "") for i in range(f, len(strand) - 2, 3)
            )
            if protein and "*" not in protein:
                out.append(Orf(chunk_id + names[f], strand[f : f + 3 * len(protein) + 1], protein))
    return out


def six_frame_orfs(chunk_id: str, chunk_sequence: str) -> list[Orf]:
    """The ORFs of one chunk in frame order F1, F2, F3, R1, R2, R3 (upper case)."""
    upper = chunk_sequence.upper()
    if len(upper) < 3:
        return []
    try:
        forward = upper.encode("ascii")
    except UnicodeEncodeError:
        return _six_frame_orfs_text(chunk_id, upper)
    out: list[Orf] = []
    _frame_orfs(chunk_id, FRAMES[:3], forward, upper, out)
    _frame_orfs(chunk_id, FRAMES[3:], forward.translate(_COMPLEMENT_BYTES)[::-1], None, out)
    return out
