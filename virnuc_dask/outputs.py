"""Result files: written per block on the workers, assembled in input order by the client.

Formats (the first two exactly as the original VirNucPro writes them):

- ``prediction_results.txt``: ``Sequence_ID\\tPrediction\\tscore1\\tscore2``, one row per
  ORF in input order, scores as ``str(numpy.float32)``; ``virus`` when score2 > score1.
- ``prediction_results_highestscore.csv`` (tab-separated): ``Modified_ID\\tIs_Virus`` per
  chunk, ``True`` when max(score2) >= max(score1) over the chunk's ORFs; rows sorted by
  chunk id as strings.
- ``read_predictions.tsv``: one row per input read, reads without ORF included.
- ``failed_records.tsv``: ``id\\tstage\\terror``.

Each block writes its part files into a scratch directory; :func:`assemble` then
concatenates them in block order (and merges the sorted per-block chunk tables),
streaming, so the client never holds a whole result in memory. Final files replace
earlier ones only once complete.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .orfs import BlockOrfs

PREDICTIONS = "prediction_results.txt"
HIGHEST = "prediction_results_highestscore.csv"
READS = "read_predictions.tsv"
FAILED = "failed_records.tsv"
HEADERS = {
    PREDICTIONS: "Sequence_ID\tPrediction\tscore1\tscore2\n",
    HIGHEST: "Modified_ID\tIs_Virus\n",
    READS: "read_id\tlength\tchunks\tchunks_with_orf\torfs\tvirus_chunks\tmax_virus_score"
           "\tprediction\n",
    FAILED: "id\tstage\terror\n",
}


@dataclasses.dataclass
class BlockCounts:
    """What one block contributed, for the run summary."""

    reads: int = 0
    chunks: int = 0
    orfs: int = 0
    reads_virus: int = 0
    reads_no_orf: int = 0
    chunks_virus: int = 0
    failed: int = 0

    def add(self, other: BlockCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def _part(parts: Path, name: str, block: int) -> Path:
    return parts / f"{name}.{block:07d}"


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


def write_block(table: BlockOrfs, scores: np.ndarray, parts: str | os.PathLike[str]) -> BlockCounts:
    """Write the part files of one block; ``scores`` are its ORF rows' class probabilities."""
    parts = Path(parts)
    counts = BlockCounts(reads=len(table.reads), orfs=len(table.orfs))
    chunk_rows: list[tuple[str, bool]] = []
    with open(_part(parts, PREDICTIONS, table.block), "w") as pred, \
            open(_part(parts, READS, table.block), "w") as reads, \
            open(_part(parts, FAILED, table.block), "w") as failed:
        row = 0
        for read in table.reads:
            if read.problem is not None:
                counts.failed += 1
                failed.write(f"{read.id}\tread\t{_clean(read.problem)} "
                             f"({read.path}, line {read.line})\n")
                reads.write(f"{read.id}\t{read.length}\t0\t0\t0\t0\tNA\tfailed\n")
                continue
            counts.chunks += read.chunks
            chunk_best: dict[str, tuple[np.float32, np.float32]] = {}
            for orf, (s1, s2) in zip(table.orfs[row:row + read.orfs],
                                     scores[row:row + read.orfs], strict=True):
                label = "virus" if s2 > s1 else "others"
                pred.write(f"{orf.id}\t{label}\t{s1}\t{s2}\n")
                chunk = orf.id[:-2]
                best = chunk_best.get(chunk)
                chunk_best[chunk] = (s1, s2) if best is None else (max(best[0], s1),
                                                                   max(best[1], s2))
            row += read.orfs
            verdicts = [(chunk, bool(b2 >= b1)) for chunk, (b1, b2) in chunk_best.items()]
            chunk_rows.extend(verdicts)
            virus_chunks = sum(v for _, v in verdicts)
            counts.chunks_virus += virus_chunks
            if not verdicts:
                counts.reads_no_orf += 1
                call, best_virus = "no_orf", "NA"
            else:
                call = "virus" if 2 * virus_chunks >= len(verdicts) else "others"
                best_virus = str(max(b2 for b1, b2 in chunk_best.values()))
                counts.reads_virus += call == "virus"
            reads.write(f"{read.id}\t{read.length}\t{read.chunks}\t{len(verdicts)}\t{read.orfs}"
                        f"\t{virus_chunks}\t{best_virus}\t{call}\n")
    chunk_rows.sort()
    with open(_part(parts, HIGHEST, table.block), "w") as high:
        high.writelines(f"{chunk}\t{verdict}\n" for chunk, verdict in chunk_rows)
    return counts


def _lines(path: Path) -> Iterator[str]:
    with open(path) as fh:
        yield from fh


def _chunk_key(line: str) -> str:
    return line.split("\t", 1)[0]


def assemble(parts: str | os.PathLike[str], out: str | os.PathLike[str], blocks: int,
             extra_failures: list[tuple[str, str, str]] = ()) -> None:
    """Join the part files of ``blocks`` blocks into the final result files in ``out``."""
    parts, out = Path(parts), Path(out)
    staged = {}
    for name in (PREDICTIONS, READS, FAILED):
        staged[name] = tmp = parts / f"final.{name}"
        with open(tmp, "w") as dest:
            dest.write(HEADERS[name])
            for block in range(blocks):
                with open(_part(parts, name, block)) as src:
                    shutil.copyfileobj(src, dest, 1 << 20)
            if name == FAILED:
                dest.writelines(f"{a}\t{b}\t{_clean(c)}\n" for a, b, c in extra_failures)
    staged[HIGHEST] = tmp = parts / f"final.{HIGHEST}"
    with open(tmp, "w") as dest:
        dest.write(HEADERS[HIGHEST])
        sources = [_lines(_part(parts, HIGHEST, b)) for b in range(blocks)]
        dest.writelines(heapq.merge(*sources, key=_chunk_key))
    for name, tmp in staged.items():
        os.replace(tmp, out / name)
