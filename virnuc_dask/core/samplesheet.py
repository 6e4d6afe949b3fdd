"""A sequencing run's samplesheet, in the nf-core convention: read and checked.

A CSV file with a header line and the columns ``sample``, ``fastq_1``, ``fastq_2``
(empty for single-end reads) and optionally ``fasta`` (assembled sequences or other
FASTA, instead of FASTQ on that row)::

    sample,fastq_1,fastq_2,fasta
    S1,S1_L001_R1_001.fastq.gz,S1_L001_R2_001.fastq.gz,
    S1,S1_L002_R1_001.fastq.gz,S1_L002_R2_001.fastq.gz,
    S2,S2_R1.fastq.gz,,
    S3,,,S3_contigs.fa

Rows with the same ``sample`` are lanes (or runs) of one sample, read in row order;
paths are relative to the sheet's folder (or absolute); plain or gzip, as for
``predict``.  Everything the sheet alone shows is checked here, before any work,
with the sheet line: a sample name other than letters, digits and ``._-``, a file
named twice, a missing or unreadable file, a FASTQ column holding FASTA (or the
reverse), ``fastq_2`` without ``fastq_1``, ``fasta`` beside ``fastq_*``, a sample
mixing paired, single-end and FASTA rows, and mate files whose first reads are
not mates.  That every later read has its mate is checked while the reads are read
(:func:`virnuc_dask.core.pairs.check_mates`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from virnuc_dask.core.formats import inspect_input
from virnuc_dask.core.pairs import are_mates, first_title, mate_layout, title_mate
from virnuc_dask.errors import InputFormatError, SampleSheetError

COLUMNS = ("sample", "fastq_1", "fastq_2", "fasta")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_KINDS = {"paired": "paired-end FASTQ", "single": "single-end FASTQ", "fasta": "FASTA"}


@dataclasses.dataclass(frozen=True)
class Lane:
    """One row of the sheet: its line and its files (mate 1 and mate 2, or one file)."""

    line: int
    files: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Sample:
    """A sample: its name, ``kind`` (``paired``, ``single`` or ``fasta``) and lanes."""

    name: str
    kind: str
    lanes: tuple[Lane, ...]

    @property
    def inputs(self) -> tuple[str, ...]:
        """The sample's files in reading order: lane after lane, mate 1 before mate 2."""
        return tuple(f for lane in self.lanes for f in lane.files)

    @property
    def line(self) -> int:
        """The sheet line of the sample's first row."""
        return self.lanes[0].line


@dataclasses.dataclass(frozen=True)
class SampleSheet:
    """The samples of a sheet, in the order of their first row."""

    path: str
    samples: tuple[Sample, ...]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


def check_sample_name(name: str) -> str | None:
    """Why ``name`` cannot name a sample (and its output folder), or None."""
    if not name:
        return "empty sample name"
    if not _NAME.fullmatch(name):
        return (
            f"sample name {name!r}: use letters, digits and '._-' only "
            "(not starting with '.'), it names the sample's output folder"
        )
    return None


def read_samplesheet(path: str | os.PathLike[str]) -> SampleSheet:
    """Read and check a samplesheet; raises :class:`SampleSheetError` naming the line."""
    path = os.fspath(path)
    return _check_rows(path, list(_rows(path)), Path(path).resolve().parent)


def samples_from_files(
    samples: Mapping[str, Sequence[str | os.PathLike[str]]],
) -> SampleSheet:
    """A sheet from ``{sample: [files]}`` (in reading order; two mate files one after
    the other are a pair, as ``predict`` pairs them), checked as a sheet is; errors name
    the sample (``samples['S1']: ...``)."""
    rows = []
    for k, (name, files) in enumerate(samples.items(), start=1):
        paths = [os.fspath(f) for f in files]
        layout = mate_layout(paths)
        i = 0
        while i < len(paths):
            row = dict.fromkeys(COLUMNS, "") | {"sample": name}
            head = first_title(paths[i])
            if layout[i] == 1:
                row["fastq_1"], row["fastq_2"] = paths[i], paths[i + 1]
                i += 2
            else:
                row["fasta" if head and head[0] == "fasta" else "fastq_1"] = paths[i]
                i += 1
            rows.append((k, row))
        if not paths:
            rows.append((k, dict.fromkeys(COLUMNS, "") | {"sample": name}))
    try:
        return _check_rows("samples", rows, Path.cwd())
    except SampleSheetError as exc:  # name the entry, not a line of a file there is not
        names = list(samples)
        where = f"samples[{names[exc.line - 1]!r}]" if exc.line else "samples"
        raise SampleSheetError(where, None, exc.problem) from None


def _check_rows(path: str, rows: list[tuple[int, dict[str, str]]], folder: Path) -> SampleSheet:
    lanes: dict[str, list[tuple[str, Lane]]] = {}
    seen: dict[str, tuple[int, str]] = {}
    for line, row in rows:
        name = row["sample"]
        problem = check_sample_name(name)
        if problem:
            raise SampleSheetError(path, line, problem)
        kind, columns = _row_kind(path, line, row)
        files = []
        for column in columns:
            file = str(folder / row[column]) if not os.path.isabs(row[column]) else row[column]
            key = os.path.realpath(file)
            if key in seen:
                earlier, earlier_column = seen[key]
                raise SampleSheetError(
                    path,
                    line,
                    f"{column} {row[column]!r} is named twice (also line {earlier}, "
                    f"{earlier_column}): each file belongs to one sample, once",
                )
            seen[key] = (line, column)
            _check_file(path, line, column, row[column], file)
            files.append(file)
        if kind == "paired":
            _check_first_mates(path, line, row, files)
        earlier = lanes.setdefault(name, [])
        if earlier and earlier[0][0] != kind:
            raise SampleSheetError(
                path,
                line,
                f"sample {name!r} mixes {_KINDS[kind]} (this line) and {_KINDS[earlier[0][0]]} "
                f"(line {earlier[0][1].line}): lanes of one sample are of one kind",
            )
        earlier.append((kind, Lane(line, tuple(files))))
    if not lanes:
        raise SampleSheetError(path, None, "no sample: the sheet has a header but no row")
    samples = tuple(
        Sample(name, rows_[0][0], tuple(lane for _, lane in rows_)) for name, rows_ in lanes.items()
    )
    return SampleSheet(path, samples)


def _rows(path: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) of every non-blank data row, once the header is checked."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise SampleSheetError(path, None, "samplesheet not found") from None
    except IsADirectoryError:
        raise SampleSheetError(path, None, "is a directory, not a samplesheet") from None
    except UnicodeDecodeError as exc:
        raise SampleSheetError(path, None, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise SampleSheetError(path, None, f"cannot be read: {exc.strerror}") from None
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    for line, fields in enumerate(reader, start=1):
        if not any(f.strip() for f in fields):
            continue
        fields = [f.strip() for f in fields]
        if header is None:
            header = _check_header(path, line, fields)
            continue
        if len(fields) != len(header):
            raise SampleSheetError(
                path,
                line,
                f"{len(fields)} fields, the header has {len(header)} ({','.join(header)})",
            )
        yield (
            line,
            {c: v for c, v in zip(header, fields, strict=True)}
            | {c: "" for c in COLUMNS if c not in header},
        )
    if header is None:
        raise SampleSheetError(
            path, None, f"empty: expected a header line with {','.join(COLUMNS[:3])}"
        )


def _check_header(path: str, line: int, header: list[str]) -> list[str]:
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise SampleSheetError(
            path,
            line,
            f"unknown column(s) {', '.join(map(repr, unknown))} in the header; allowed: "
            f"{', '.join(COLUMNS)} (a header line is required)",
        )
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise SampleSheetError(path, line, f"column(s) {', '.join(repeated)} named twice")
    if "sample" not in header or not {"fastq_1", "fasta"} & set(header):
        raise SampleSheetError(
            path,
            line,
            "the header needs the columns sample and fastq_1 (fastq_2 for paired reads) or fasta",
        )
    return header


def _row_kind(path: str, line: int, row: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """(kind, the columns holding its files) of a row."""
    fq1, fq2, fa = row["fastq_1"], row["fastq_2"], row["fasta"]
    if fa and (fq1 or fq2):
        raise SampleSheetError(
            path, line, "fasta and fastq_1/fastq_2 on one row: give FASTA or FASTQ, not both"
        )
    if fa:
        return "fasta", ("fasta",)
    if fq2 and not fq1:
        raise SampleSheetError(path, line, "fastq_2 given without fastq_1")
    if not fq1:
        raise SampleSheetError(path, line, f"sample {row['sample']!r} names no file")
    return ("paired", ("fastq_1", "fastq_2")) if fq2 else ("single", ("fastq_1",))


def _check_file(path: str, line: int, column: str, given: str, file: str) -> None:
    """The file exists, is readable and holds what its column says."""
    try:
        _, _, fmt, _ = inspect_input(file)
    except FileNotFoundError:
        raise SampleSheetError(path, line, f"{column} {given!r}: file not found ({file})") from None
    except InputFormatError as exc:
        raise SampleSheetError(path, line, f"{column} {given!r}: {exc}") from None
    wanted = "fasta" if column == "fasta" else "fastq"
    head = first_title(file)
    if head is not None and fmt != wanted:
        other = "the fasta column" if wanted == "fastq" else "fastq_1 (and fastq_2)"
        raise SampleSheetError(
            path,
            line,
            f"{column} {given!r} holds {fmt.upper()}, not {wanted.upper()}: put it in {other}",
        )


def _check_first_mates(path: str, line: int, row: dict[str, str], files: list[str]) -> None:
    first, second = first_title(files[0]), first_title(files[1])
    if first is None or second is None:
        return  # an empty file: reading it reports it
    if not are_mates(first, second):
        (id1, m1), (id2, m2) = title_mate(first[1]), title_mate(second[1])
        raise SampleSheetError(
            path,
            line,
            f"the first reads of fastq_1 {row['fastq_1']!r} ({id1!r}, mate {m1 or '?'}) and "
            f"fastq_2 {row['fastq_2']!r} ({id2!r}, mate {m2 or '?'}) are not mates of one "
            "pair (same id; mate 1 in fastq_1, mate 2 in fastq_2)",
        )
