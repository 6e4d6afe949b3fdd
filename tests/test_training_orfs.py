"""Training-mode ORF selection against the original's rules (istraindata=True)."""

from __future__ import annotations

import random

import pytest

from virnuc_dask.core.fasta import Record
from virnuc_dask.core.orfs import orfs_from_records
from virnuc_dask.core.training_orfs import (
    AMBIGUOUS,
    ProteinReference,
    TrainingSelection,
    load_reference,
    training_orfs,
)
from virnuc_dask.core.translate import CODON_TABLE, reverse_complement, six_frame_orfs


def _frames(seq: str) -> list[str]:
    """The six translations as the original computes them (codons not in the table drop)."""
    out = []
    for strand in (seq, reverse_complement(seq)):
        for f in range(3):
            out.append(
                "".join(
                    CODON_TABLE.get(strand[i : i + 3], "") for i in range(f, len(strand) - 2, 3)
                )
            )
    return out


def _rule(chunk_id: str, chunk: str, proteins: list[str]) -> list[tuple[str, str, str]]:
    """The training rule written from its description, independently of the module."""
    seq = chunk.upper()
    if set(seq) & set("NRYMKSWHBVD"):
        return []
    kept = []
    for num, protein in enumerate(_frames(seq), start=1):
        if not protein or "*" in protein or not any(protein in ref for ref in proteins):
            continue
        strand = seq if num <= 3 else reverse_complement(seq)
        f = (num - 1) % 3
        name = f"F{num}" if num <= 3 else f"R{num - 3}"
        kept.append((chunk_id + name, strand[f : f + 3 * len(protein) + 1], protein))
    return kept


def _random_chunk(rng: random.Random, n: int, ambiguous: float) -> str:
    bases = []
    for _ in range(n):
        if rng.random() < ambiguous:
            bases.append(rng.choice("NRYMKSWHBVDU"))
        else:
            bases.append(rng.choice("ACGTacgt"))
    return "".join(bases)


def _coding_chunk(rng: random.Random, n: int) -> str:
    sense = [c for c, a in CODON_TABLE.items() if a != "*"]
    return "".join(rng.choices(sense, k=n // 3 + 1))[:n]


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_rule_on_random_chunks(seed):
    rng = random.Random(seed)
    chunks = [_coding_chunk(rng, rng.randint(3, 320)) for _ in range(150)]
    chunks += [_random_chunk(rng, rng.randint(3, 320), 0.004) for _ in range(150)]
    # Reference: translations of some of the chunks, inside longer proteins, some mutated.
    proteins = []
    for chunk in rng.sample(chunks, 60):
        for protein in _frames(chunk.upper()):
            if protein and rng.random() < 0.5:
                if rng.random() < 0.3 and len(protein) > 3:
                    i = rng.randrange(len(protein))
                    protein = protein[:i] + "W" + protein[i + 1 :]
                proteins.append("MA" + protein + "GK")
    reference = ProteinReference(proteins)
    kept_some = dropped_some = 0
    for i, chunk in enumerate(chunks):
        got = [(o.id, o.nucleotide, o.protein) for o in training_orfs(f"c{i}", chunk, reference)]
        expected = _rule(f"c{i}", chunk, proteins)
        assert got == expected, chunk
        kept_some += bool(got)
        dropped_some += len(got) < len([p for p in _frames(chunk.upper()) if p and "*" not in p])
    assert kept_some > 10 and dropped_some > 10  # both branches exercised


@pytest.mark.parametrize("base", sorted(AMBIGUOUS))
def test_an_ambiguous_base_drops_the_chunk(base):
    chunk = "ATGAAACCCGGGTTT" * 4
    assert training_orfs("c", chunk, None)
    for pos in (0, 29, len(chunk) - 1):
        bad = chunk[:pos] + base + chunk[pos + 1 :]
        assert training_orfs("c", bad, None) == []
        assert training_orfs("c", bad.lower(), None) == []


def test_u_is_not_ambiguous_but_its_codons_drop():
    chunk = "ATGAAAUCCGGGTTT"
    orfs = training_orfs("c", chunk, None)
    assert orfs and orfs[0].protein == "MKGF"


def test_without_reference_every_stop_free_frame_is_kept():
    rng = random.Random(5)
    for _ in range(50):
        chunk = _coding_chunk(rng, 300)
        assert training_orfs("c", chunk, None) == six_frame_orfs("c", chunk)


def test_reference_substring_queries():
    ref = ProteinReference(["MKTAYIAKQRQISFVK", "GGGG", "acde"])
    assert ref.proteins == 3 and ref.residues == 24
    for query in ("MKTAYIAKQRQISFVK", "TAYIAKQRQ", "KQRQISFVK", "GGG", "ACDE", "M"):
        assert query in ref
    for query in ("MKTAYIAKQRQISFVKG", "TAYIAKQRW", "KGGG", "VKGGGG", "DEA"):
        assert query not in ref
    # a match may not span two proteins
    assert "SFVKGGGG" not in ref
    empty = ProteinReference([])
    assert "MK" not in empty and "MKTAYIAKQ" not in empty


def test_reference_many_repeats():
    ref = ProteinReference(["AAAAAAAAAAAAAAAAAAAAAAAAC"] * 50 + ["AAAAAAAAAAD"])
    assert "AAAAAAAAAAD" in ref
    assert "AAAAAAAAAAAAAAAAAAAAAAAACA" not in ref
    assert "AAAAAAAAAAE" not in ref


def test_selection_reads_the_reference_files(tmp_path):
    import gzip

    (tmp_path / "a.faa").write_text(">p1 a protein\nMKKK\nLLLPA\n>p2\nWWW\n")
    with gzip.open(tmp_path / "b.faa.gz", "wt") as fh:
        fh.write(">p3\nQQQQRRRR\n")
    ref = load_reference([str(tmp_path / "a.faa"), str(tmp_path / "b.faa.gz")])
    assert "MKKKLLLPA" in ref and "QRRR" in ref and "KKW" not in ref
    select = TrainingSelection((str(tmp_path / "a.faa"),))
    # ATG AAA AAA AAA: F1 = MKKK, kept; the other frames are not in the reference
    assert [o.id for o in select("c", "ATGAAAAAAAAA")] == ["cF1"]
    assert TrainingSelection()("c", "ATGAAAAAAAAA") == six_frame_orfs("c", "ATGAAAAAAAAA")


def test_selection_plugs_into_the_orf_table():
    records = [Record("r1", "ATGAAAAAAAAA", "in.fa", 1), Record("r2", "ATGNAAAAAAAA", "in.fa", 3)]
    table = orfs_from_records(records, 300, select=TrainingSelection())
    assert [r.orfs for r in table.reads] == [len(six_frame_orfs("x", "ATGAAAAAAAAA")), 0]
    assert [r.chunks for r in table.reads] == [1, 1]
