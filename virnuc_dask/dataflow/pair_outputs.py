"""``pair_predictions.tsv``: one row per read pair, from the mates' rows of
``read_predictions.tsv``.

A pair is judged by the read rule over both mates' chunks together: ``virus`` when at
least half of the chunks with a scored ORF (of mate 1 and mate 2) are viral chunks.
Columns:

| column | content |
|---|---|
| ``pair_id`` | the read id the mates share (the outputs name the mates ``<pair_id>/1``, ``/2``) |
| ``length_1``, ``length_2`` | length of each mate (bases) |
| ``chunks``, ``chunks_with_orf``, ``orfs``, ``virus_chunks`` | sums over both mates |
| ``max_virus_score`` | the highest chunk virus score of either mate (``NA``: none) |
| ``prediction`` | ``virus``, ``others``, ``no_orf`` (neither mate has an ORF) or ``failed`` |
| ``prediction_1``, ``prediction_2`` | each mate's own call, as in ``read_predictions.tsv`` |

Rows follow the order of the mate 1 file (lane after lane).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from virnuc_dask.core.pairs import PairRows
from virnuc_dask.files import atomic_writer
from virnuc_dask.rundir import PAIRS, READS

HEADER = (
    "pair_id\tlength_1\tlength_2\tchunks\tchunks_with_orf\torfs\tvirus_chunks"
    "\tmax_virus_score\tprediction\tprediction_1\tprediction_2\n"
)


def _mate_lines(path: Path, pairs: Sequence[PairRows]) -> Iterator[tuple[str, str]]:
    """(mate 1 row, mate 2 row) of every pair, streaming ``read_predictions.tsv`` twice."""

    def seek(fh: TextIO, at: int, row: int) -> None:
        next(itertools.islice(fh, row - at, row - at), None)

    with open(path) as first, open(path) as second:
        next(first), next(second)  # the header
        at1 = at2 = 0
        for pair in pairs:
            seek(first, at1, pair.first)
            seek(second, at2, pair.second)
            for _ in range(pair.n):
                yield next(first), next(second)
            at1, at2 = pair.first + pair.n, pair.second + pair.n


def pair_row(mate1: str, mate2: str) -> tuple[str, str]:
    """(the pair's row, its prediction) from the two mates' ``read_predictions.tsv`` rows."""
    a, b = mate1.rstrip("\n").split("\t"), mate2.rstrip("\n").split("\t")
    pair_id = a[0][:-2]
    if a[0][-2:] != "/1" or b[0] != f"{pair_id}/2":
        raise ValueError(f"read_predictions.tsv: {a[0]!r} and {b[0]!r} are not mates")
    chunks, with_orf, orfs, virus = (int(a[k]) + int(b[k]) for k in (2, 3, 4, 5))
    scores = [s for s in (a[6], b[6]) if s != "NA"]
    best = max(scores, key=float) if scores else "NA"
    if with_orf:
        call = "virus" if 2 * virus >= with_orf else "others"
    elif "failed" in (a[7], b[7]):
        call = "failed"
    else:
        call = "no_orf"
    fields = (pair_id, a[1], b[1], chunks, with_orf, orfs, virus, best, call, a[7], b[7])
    return "\t".join(map(str, fields)) + "\n", call


def write_pair_predictions(out: str | os.PathLike[str], pairs: Sequence[PairRows]) -> dict:
    """Write ``out/pair_predictions.tsv`` for ``pairs`` (none: remove an earlier one);
    the counts for the run summary: pairs and pairs per prediction."""
    out = Path(out)
    dest = out / PAIRS
    if not pairs:
        dest.unlink(missing_ok=True)
        return {}
    counts = {"pairs": 0, "virus": 0, "others": 0, "no_orf": 0, "failed": 0}
    with atomic_writer(dest) as fh:
        fh.write(HEADER)
        for mate1, mate2 in _mate_lines(out / READS, pairs):
            row, call = pair_row(mate1, mate2)
            fh.write(row)
            counts["pairs"] += 1
            counts[call] += 1
    return counts
