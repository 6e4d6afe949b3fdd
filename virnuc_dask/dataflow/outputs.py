"""Result files: written per block on the workers, assembled in input order by the client.

Formats (the first two exactly as the original VirNucPro writes them):

- ``prediction_results.txt``: ``Sequence_ID\\tPrediction\\tscore1\\tscore2``, one row per
  ORF in input order, scores as ``str(numpy.float32)``; ``virus`` when score2 > score1.
- ``prediction_results_highestscore.csv`` (tab-separated): ``Modified_ID\\tIs_Virus`` per
  chunk, ``True`` when max(score2) >= max(score1) over the chunk's ORFs; rows sorted by
  chunk id as strings.
- ``read_predictions.tsv``: one row per input read, reads without ORF included.
- ``failed_records.tsv``: ``id\\tstage\\terror``: reads that could not be used (stage
  ``read``, with file and line) and ORFs that could not be embedded (stage ``dnabert`` or
  ``esm``). A failed ORF has no score, so it is absent from the first two files (a chunk
  all of whose ORFs failed is absent too); its read is judged on its other ORFs, and is
  ``failed`` in ``read_predictions.tsv`` when it has none.

Each block writes its part files into a scratch directory; :func:`assemble` then
concatenates them in block order (and merges the sorted per-block chunk tables),
streaming, so the client never holds a whole result in memory. Final files replace
earlier ones only once complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from virnuc_dask.core.orfs import BlockOrfs
from virnuc_dask.rundir import FAILED, HIGHEST, PREDICTIONS, READS, SUMMARY

HEADERS = {
    PREDICTIONS: "Sequence_ID\tPrediction\tscore1\tscore2\n",
    HIGHEST: "Modified_ID\tIs_Virus\n",
    READS: "read_id\tlength\tchunks\tchunks_with_orf\torfs\tvirus_chunks\tmax_virus_score"
    "\tprediction\n",
    FAILED: "id\tstage\terror\n",
}


@dataclasses.dataclass
class BlockCounts:
    """What one block contributed, for the run summary.

    ``failed``: rows of ``failed_records.tsv`` (reads, ORFs, empty input files);
    ``reads_failed``: reads predicted ``failed``; ``orfs_failed``: ORFs not embedded.
    """

    reads: int = 0
    chunks: int = 0
    orfs: int = 0
    reads_virus: int = 0
    reads_no_orf: int = 0
    chunks_virus: int = 0
    failed: int = 0
    reads_failed: int = 0
    orfs_failed: int = 0

    def add(self, other: BlockCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def _part(parts: Path, name: str, block: int) -> Path:
    return parts / f"{name}.{block:07d}"


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


@contextlib.contextmanager
def _writing(path: Path, *, sync: bool = False) -> Iterator[TextIO]:
    """``open(path, "w")`` whose OSError (a full disk, say) names the file; ``sync``: the
    data is on disk when the block ends."""
    try:
        with open(path, "w") as fh:
            yield fh
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def write_block(
    table: BlockOrfs,
    scores: np.ndarray,
    parts: str | os.PathLike[str],
    failed: Mapping[int, tuple[str, str]] | None = None,
) -> BlockCounts:
    """Write the part files of one block; ``scores`` are its ORF rows' class probabilities.

    ``table.orfs`` may hold the ORFs or only their ids (all this needs).

    ``failed`` maps block rows of ORFs that could not be embedded to (stage, error): they
    are listed in the failed records instead of the predictions, and their read is
    judged on its other ORFs (``failed`` when it has none).
    """
    parts = Path(parts)
    failed = failed or {}
    counts = BlockCounts(reads=len(table.reads), orfs=len(table.orfs))
    chunk_rows: list[tuple[str, bool]] = []
    with (
        _writing(_part(parts, PREDICTIONS, table.block)) as pred,
        _writing(_part(parts, READS, table.block)) as reads,
        _writing(_part(parts, FAILED, table.block)) as failures,
    ):
        row = 0
        for read in table.reads:
            if read.problem is not None:
                counts.failed += 1
                counts.reads_failed += 1
                failures.write(
                    f"{read.id}\tread\t{_clean(read.problem)} ({read.path}, line {read.line})\n"
                )
                reads.write(f"{read.id}\t{read.length}\t0\t0\t0\t0\tNA\tfailed\n")
                continue
            counts.chunks += read.chunks
            chunk_best: dict[str, tuple[np.float32, np.float32]] = {}
            for r, orf in enumerate(table.orfs[row : row + read.orfs], start=row):
                orf_id = orf if isinstance(orf, str) else orf.id
                if r in failed:
                    stage, error = failed[r]
                    counts.failed += 1
                    counts.orfs_failed += 1
                    failures.write(f"{orf_id}\t{stage}\t{_clean(error)}\n")
                    continue
                s1, s2 = scores[r]
                label = "virus" if s2 > s1 else "others"
                # str(), not an f-string field: numpy formats a float32 in a format
                # string as a float64 ("0.04085734114050865" for "0.04085734").
                pred.write(f"{orf_id}\t{label}\t{str(s1)}\t{str(s2)}\n")
                chunk = orf_id[:-2]
                best = chunk_best.get(chunk)
                chunk_best[chunk] = (
                    (s1, s2) if best is None else (max(best[0], s1), max(best[1], s2))
                )
            row += read.orfs
            verdicts = [(chunk, bool(b2 >= b1)) for chunk, (b1, b2) in chunk_best.items()]
            chunk_rows.extend(verdicts)
            virus_chunks = sum(v for _, v in verdicts)
            counts.chunks_virus += virus_chunks
            if verdicts:
                call = "virus" if 2 * virus_chunks >= len(verdicts) else "others"
                best_virus = str(max(b2 for b1, b2 in chunk_best.values()))
                counts.reads_virus += call == "virus"
            elif read.orfs:
                counts.reads_failed += 1
                call, best_virus = "failed", "NA"
            else:
                counts.reads_no_orf += 1
                call, best_virus = "no_orf", "NA"
            reads.write(
                f"{read.id}\t{read.length}\t{read.chunks}\t{len(verdicts)}\t{read.orfs}"
                f"\t{virus_chunks}\t{best_virus}\t{call}\n"
            )
    chunk_rows.sort()
    with _writing(_part(parts, HIGHEST, table.block)) as high:
        high.writelines(f"{chunk}\t{verdict}\n" for chunk, verdict in chunk_rows)
    return counts


def _lines(path: Path) -> Iterator[str]:
    with open(path) as fh:
        yield from fh


def _chunk_key(line: str) -> str:
    return line.split("\t", 1)[0]


def assemble(
    parts: str | os.PathLike[str],
    out: str | os.PathLike[str],
    blocks: int,
    file_failures: Sequence[tuple[str, str, str]] = (),
) -> None:
    """Join the part files of ``blocks`` blocks into the final result files in ``out``.

    ``file_failures``: (id, stage, error) rows about whole input files, listed first.

    Every final file is first written completely (and flushed to disk) in ``parts``, then
    renamed over the old one: an interruption or a full disk leaves the earlier files.
    """
    parts, out = Path(parts), Path(out)
    staged = {}
    for name in (PREDICTIONS, READS, FAILED):
        staged[name] = tmp = parts / f"final.{name}"
        with _writing(tmp, sync=True) as dest:
            dest.write(HEADERS[name])
            if name == FAILED:
                dest.writelines(f"{a}\t{b}\t{_clean(c)}\n" for a, b, c in file_failures)
            for block in range(blocks):
                with open(_part(parts, name, block)) as src:
                    shutil.copyfileobj(src, dest, 1 << 20)
    staged[HIGHEST] = tmp = parts / f"final.{HIGHEST}"
    with _writing(tmp, sync=True) as dest:
        dest.write(HEADERS[HIGHEST])
        sources = [_lines(_part(parts, HIGHEST, b)) for b in range(blocks)]
        dest.writelines(heapq.merge(*sources, key=_chunk_key))
    for name, tmp in staged.items():
        os.replace(tmp, out / name)


def remove_results(out: str | os.PathLike[str]) -> None:
    """Delete the result files of an earlier run in ``out`` (when it is being replaced)."""
    for name in (*HEADERS, SUMMARY):
        (Path(out) / name).unlink(missing_ok=True)
