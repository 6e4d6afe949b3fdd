"""Six-frame ORFs match VirNucPro's translate_dna + identify_seq, quirks included."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from Bio import SeqIO
from helpers import REFERENCE

from virnuc_dask.core.translate import FRAMES, Orf, reverse_complement, six_frame_orfs

CASES = sorted(p.parent for p in (REFERENCE / "dev").glob("*/input.fa"))

# --- literal restatement of the original (units.translate_dna, identify_seq, make_predictdata)
ORIGINAL_CODONS = {
    "TCA": "S",
    "TCC": "S",
    "TCG": "S",
    "TCT": "S",
    "TTC": "F",
    "TTT": "F",
    "TTA": "L",
    "TTG": "L",
    "TAC": "Y",
    "TAT": "Y",
    "TAA": "*",
    "TAG": "*",
    "TGC": "C",
    "TGT": "C",
    "TGA": "*",
    "TGG": "W",
    "CTA": "L",
    "CTC": "L",
    "CTG": "L",
    "CTT": "L",
    "CCA": "P",
    "CCC": "P",
    "CCG": "P",
    "CCT": "P",
    "CAC": "H",
    "CAT": "H",
    "CAA": "Q",
    "CAG": "Q",
    "CGA": "R",
    "CGC": "R",
    "CGG": "R",
    "CGT": "R",
    "ATA": "I",
    "ATC": "I",
    "ATT": "I",
    "ATG": "M",
    "ACA": "T",
    "ACC": "T",
    "ACG": "T",
    "ACT": "T",
    "AAC": "N",
    "AAT": "N",
    "AAA": "K",
    "AAG": "K",
    "AGC": "S",
    "AGT": "S",
    "AGA": "R",
    "AGG": "R",
    "GTA": "V",
    "GTC": "V",
    "GTG": "V",
    "GTT": "V",
    "GCA": "A",
    "GCC": "A",
    "GCG": "A",
    "GCT": "A",
    "GAC": "D",
    "GAT": "D",
    "GAA": "E",
    "GAG": "E",
    "GGA": "G",
    "GGC": "G",
    "GGG": "G",
    "GGT": "G",
}


def oracle_revcomp(sequence: str) -> str:
    return sequence.translate(str.maketrans("ACGTacgt", "TGCAtgca"))[::-1]


def oracle_orfs(seqid: str, chunk: str) -> list[tuple[str, str, str]]:
    sequence = chunk.upper()

    def translate_frame(s: str, frame: int) -> str:
        return "".join(ORIGINAL_CODONS.get(s[i : i + 3], "") for i in range(frame, len(s) - 2, 3))

    proteins = [translate_frame(sequence, f) for f in range(3)]
    rev = oracle_revcomp(sequence)
    proteins += [translate_frame(rev, f) for f in range(3)]
    out = []
    for num, item in enumerate(proteins, start=1):
        if "*" not in item:
            seq_len = len(item) * 3
            if num <= 3:
                selected, name = sequence[num - 1 : num + seq_len], seqid + "F" + str(num)
            else:
                selected = oracle_revcomp(sequence)[num - 3 - 1 : num - 3 + seq_len]
                name = seqid + "R" + str(num - 3)
            if item != "":  # make_predictdata writes only non-empty proteins
                out.append((name, selected, item))
    return out


def as_tuples(orfs: list[Orf]) -> list[tuple[str, str, str]]:
    return [(o.id, o.nucleotide, o.protein) for o in orfs]


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
@pytest.mark.parametrize("length", [300, 500])
def test_reference_orfs(case: Path, length: int) -> None:
    got = [
        orf
        for rec in SeqIO.parse(case / f"L{length}" / f"input_chunked{length}.fa", "fasta")
        for orf in six_frame_orfs(rec.id, str(rec.seq))
    ]
    nucleotide = [
        (r.id, str(r.seq))
        for r in SeqIO.parse(case / f"L{length}" / "input_identified_nucleotide.fa", "fasta")
    ]
    protein = [
        (r.id, str(r.seq))
        for r in SeqIO.parse(case / f"L{length}" / "input_identified_protein.faa", "fasta")
    ]
    assert [(o.id, o.nucleotide) for o in got] == nucleotide
    assert [(o.id, o.protein) for o in got] == protein


ALPHABETS = ["ACGT", "ACGTacgt", "ACGTN", "ACGTacgtNnRYKMSWBDHVryk", "ACGTUu-*. X"]


@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_random_sequences_match_oracle(alphabet: str) -> None:
    rng = random.Random(alphabet)
    for n in range(4000):
        seq = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert as_tuples(six_frame_orfs(f"c{n}", seq)) == oracle_orfs(f"c{n}", seq), seq


def test_long_random_sequences_match_oracle() -> None:
    rng = random.Random(7)
    for n in range(300):
        alphabet = "ACGT" * 20 + "acgtNRY" if n % 2 else "ACGT"
        seq = "".join(rng.choice(alphabet) for _ in range(rng.randint(21, 600)))
        assert as_tuples(six_frame_orfs("c", seq)) == oracle_orfs("c", seq)


@pytest.mark.parametrize(
    "seq",
    ["ATG\u00e9AAATTT", "\u00dfATGAAA", "atg\u0131aaCCC", "ATGAAA\u017fTTT", "\u00e9\u00e9\u00e9"],
)
def test_non_ascii_takes_the_same_semantics(seq: str) -> None:
    # str.upper() may change such text ('ß' -> 'SS', 'ı' -> 'I'); the original upper-cases first
    assert as_tuples(six_frame_orfs("c", seq)) == oracle_orfs("c", seq)


def test_examples_of_the_quirks() -> None:
    # ambiguous codon dropped, +1 base, reverse complement keeps N
    assert as_tuples(six_frame_orfs("c", "atgNaaaTGgc")) == [
        ("cF1", "ATGNAAA", "MM"),
        ("cF2", "TGNAAAT", "KW"),
        ("cF3", "GNAAATG", "NG"),
        ("cR1", "GCCATTT", "AI"),
        ("cR2", "CCATTTN", "PF"),
        ("cR3", "CATTTNC", "HH"),
    ]
    assert six_frame_orfs("c", "AC") == []
    assert six_frame_orfs("c", "NNNNNN") == []  # no codon left: empty protein, not an ORF
    assert [o.id for o in six_frame_orfs("x_chunk_2", "GCAGCAGCAGC")] == [
        "x_chunk_2F1",
        "x_chunk_2F2",
        "x_chunk_2F3",
        "x_chunk_2R1",
        "x_chunk_2R2",
        "x_chunk_2R3",
    ]
    assert FRAMES == ("F1", "F2", "F3", "R1", "R2", "R3")


def test_reverse_complement() -> None:
    assert reverse_complement("ACGTacgtNRYU-") == "-UYRNacgtACGT"  # only ACGT swapped
    assert reverse_complement("AACGTTn") == "nAACGTT"
    rng = random.Random(3)
    for _ in range(200):
        seq = "".join(rng.choice("ACGTacgtNRYKM") for _ in range(rng.randint(0, 50)))
        assert reverse_complement(seq) == oracle_revcomp(seq)
