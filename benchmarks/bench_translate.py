"""Six-frame ORF speed: virnuc_dask.core.translate against the original and two alternatives.

    python benchmarks/bench_translate.py [--chunks 20000] [--repeat 3]

Chunks are 300-500 bp, seeded: "coding" = a stop-free reading frame on a random
strand and offset (every chunk has an ORF, as in VirNucPro's inputs), "random" =
uniform ACGT (most chunks have none), "messy" = coding with lower case and 2% N
or IUPAC letters.  Every method's output is checked against the original's.

Methods: ``original`` (literal translate_dna + identify_seq: a dict lookup per
codon in a generator), ``struct_dict`` (codons cut in C with struct.unpack, stop
test by set.isdisjoint, dict lookups via map), ``numpy`` (codon indices with
numpy, per chunk), ``virnuc_dask`` (the package: base-256 big-integer codon
indices + bytes.translate).
"""

from __future__ import annotations

import argparse
import random
import struct
import time
from collections.abc import Callable
from functools import lru_cache
from itertools import repeat

import numpy as np

from virnuc_dask.core.translate import CODON_TABLE, six_frame_orfs

Result = list[tuple[str, str, str]]
NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")


# --- the original, restated literally --------------------------------------------------------
def original(seqid: str, chunk: str) -> Result:
    sequence = chunk.upper()

    def revcomp(s: str) -> str:
        return s.translate(str.maketrans("ACGTacgt", "TGCAtgca"))[::-1]

    def translate_frame(s: str, frame: int) -> str:
        return "".join(CODON_TABLE.get(s[i : i + 3], "") for i in range(frame, len(s) - 2, 3))

    proteins = [translate_frame(sequence, f) for f in range(3)]
    proteins += [translate_frame(revcomp(sequence), f) for f in range(3)]
    out = []
    for num, item in enumerate(proteins, start=1):
        if "*" not in item and item:
            seq_len = len(item) * 3
            if num <= 3:
                out.append((seqid + "F" + str(num), sequence[num - 1 : num + seq_len], item))
            else:
                out.append(
                    (
                        seqid + "R" + str(num - 3),
                        revcomp(sequence)[num - 3 - 1 : num - 3 + seq_len],
                        item,
                    )
                )
    return out


# --- alternative 1: struct + dict ------------------------------------------------------------
_BYTES_TABLE = {k.encode(): v for k, v in CODON_TABLE.items()}
_STOPS = frozenset({b"TAA", b"TAG", b"TGA"})
_COMP = bytes.maketrans(b"ACGT", b"TGCA")


@lru_cache(maxsize=4096)
def _unpacker(codons: int) -> Callable[[bytes], tuple[bytes, ...]]:
    return struct.Struct("3s" * codons).unpack


def struct_dict(seqid: str, chunk: str) -> Result:
    s = chunk.upper()
    b = s.encode("ascii")
    n = len(b)
    if n < 3:
        return []
    strands = (b, b.translate(_COMP)[::-1])
    out = []
    for fi in range(6):
        f, src = fi % 3, strands[fi // 3]
        m = (n - f) // 3
        if m == 0:
            continue
        codons = _unpacker(m)(src[f : f + 3 * m])
        if not _STOPS.isdisjoint(codons):
            continue
        protein = "".join(map(_BYTES_TABLE.get, codons, repeat("")))
        if protein:
            text = s if fi < 3 else src.decode("ascii")
            out.append((seqid + NAMES[fi], text[f : f + 3 * len(protein) + 1], protein))
    return out


# --- alternative 2: numpy ---------------------------------------------------------------------
_LUT = np.full(256, 4, np.uint8)
for _i, _c in enumerate(b"TCAG"):
    _LUT[_c] = _i
_AA = np.zeros(125, np.uint8)
for _codon, _amino in CODON_TABLE.items():
    _a, _b, _c = ("TCAG".index(x) for x in _codon)
    _AA[25 * _a + 5 * _b + _c] = ord(_amino)
_COMP_CODE = np.array([2, 3, 0, 1, 4], np.uint8)  # T<->A, C<->G in TCAG order


def numpy_codes(seqid: str, chunk: str) -> Result:
    s = chunk.upper()
    b = s.encode("ascii")
    if len(b) < 3:
        return []
    codes = _LUT[np.frombuffer(b, np.uint8)]
    rev = _COMP_CODE[codes[::-1]]
    aminos = []
    for c in (codes, rev):
        aminos.append(_AA[c[:-2].astype(np.int16) * 25 + c[1:-1] * 5 + c[2:]])
    out, rc_text = [], None
    for fi in range(6):
        f = fi % 3
        a = aminos[fi // 3][f::3]
        a = a[a != 0]
        if a.size == 0:
            continue
        protein = a.tobytes()
        if b"*" in protein:
            continue
        if fi < 3:
            text = s
        else:
            rc_text = rc_text or b.translate(_COMP)[::-1].decode("ascii")
            text = rc_text
        out.append((seqid + NAMES[fi], text[f : f + 3 * len(protein) + 1], protein.decode()))
    return out


def virnuc_dask(seqid: str, chunk: str) -> Result:
    return [(o.id, o.nucleotide, o.protein) for o in six_frame_orfs(seqid, chunk)]


# --- data -------------------------------------------------------------------------------------
def make_chunks(kind: str, count: int, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(f"{kind}-{seed}")
    sense = [c for c, a in CODON_TABLE.items() if a != "*"]
    chunks = []
    for i in range(count):
        length = rng.randint(300, 500)
        if kind == "random":
            seq = "".join(rng.choices("ACGT", k=length))
        else:
            seq = "".join(rng.choices("ACGT", k=rng.randint(0, 2)))
            seq += "".join(rng.choices(sense, k=length // 3 + 1))
            seq = seq[:length]
            if rng.random() < 0.5:
                seq = seq.translate(str.maketrans("ACGT", "TGCA"))[::-1]
            if kind == "messy":
                seq = "".join(
                    rng.choice("NRYKMSWBDHVn")
                    if rng.random() < 0.02
                    else (c.lower() if rng.random() < 0.3 else c)
                    for c in seq
                )
        chunks.append((f"read{i:06d}_chunk_1", seq))
    return chunks


def measure(
    method: Callable[[str, str], Result], chunks: list[tuple[str, str]], repeat_: int
) -> tuple[float, int]:
    best, orfs = float("inf"), 0
    for _ in range(repeat_):
        start = time.perf_counter()
        orfs = sum(len(method(cid, seq)) for cid, seq in chunks)
        best = min(best, time.perf_counter() - start)
    return best, orfs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    methods = {
        "original": original,
        "struct_dict": struct_dict,
        "numpy": numpy_codes,
        "virnuc_dask": virnuc_dask,
    }
    for kind in ("coding", "messy", "random"):
        chunks = make_chunks(kind, args.chunks)
        expected = [original(cid, seq) for cid, seq in chunks]
        for name, method in methods.items():
            assert [method(cid, seq) for cid, seq in chunks] == expected, name
        print(
            f"{kind}: {len(chunks)} chunks of 300-500 bp, "
            f"{sum(map(len, expected))} ORFs (outputs identical for all methods)"
        )
        base = None
        for name, method in methods.items():
            seconds, orfs = measure(method, chunks, args.repeat)
            base = base or seconds
            print(
                f"  {name:12s} {orfs / seconds:10.0f} ORFs/s {len(chunks) / seconds:10.0f} "
                f"chunks/s   x{base / seconds:5.1f} vs original"
            )


if __name__ == "__main__":
    main()
