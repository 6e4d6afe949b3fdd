"""The tables across the samples of a sequencing run: ``samples.tsv`` (one line per
sample) and ``virnuc_dask_mqc.tsv``, the same figures as a MultiQC custom-content table
that MultiQC adds to its General Statistics (run ``multiqc RUN/`` beside the other tools'
outputs; the sample names are the sheet's).

``samples.tsv`` columns:

| column | content |
|---|---|
| ``sample`` | the sheet's sample name (its output folder) |
| ``status`` | ``complete``, ``partial`` (some records failed) or ``failed`` (see ``error``) |
| ``kind`` | ``paired``, ``single`` or ``fasta`` |
| ``reads`` | reads (each mate counts once) |
| ``pairs`` | read pairs (``NA`` for unpaired input) |
| ``chunks``, ``orfs`` | chunks and ORFs of the sample's reads |
| ``viral_reads``, ``viral_fraction`` | reads predicted ``virus``, and their share of ``reads`` |
| ``viral_pairs`` | pairs predicted ``virus`` (``NA`` for unpaired input) |
| ``no_orf_reads`` | reads with no ORF (too short, stop codons in every frame) |
| ``failed_records`` | rows of the sample's ``failed_records.tsv`` |
| ``orfs_from_run`` | ORFs that took the scores of identical ones of another sample |
| ``seconds`` | the sample's wall time (samples run side by side: these overlap) |
| ``error`` | why a ``failed`` sample failed (empty otherwise) |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

COLUMNS = (
    "sample",
    "status",
    "kind",
    "reads",
    "pairs",
    "chunks",
    "orfs",
    "viral_reads",
    "viral_fraction",
    "viral_pairs",
    "no_orf_reads",
    "failed_records",
    "orfs_from_run",
    "seconds",
    "error",
)


@dataclasses.dataclass(frozen=True)
class SampleRow:
    """One sample's line of ``samples.tsv`` (``None``: not applicable, written ``NA``)."""

    sample: str
    status: str
    kind: str
    reads: int | None = None
    pairs: int | None = None
    chunks: int | None = None
    orfs: int | None = None
    viral_reads: int | None = None
    viral_pairs: int | None = None
    no_orf_reads: int | None = None
    failed_records: int | None = None
    orfs_from_run: int | None = None
    seconds: float = 0.0
    error: str = ""

    @property
    def viral_fraction(self) -> float | None:
        if not self.reads or self.viral_reads is None:
            return None
        return self.viral_reads / self.reads

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


def sample_row(
    name: str, kind: str, summary: dict[str, Any], seconds: float, from_run: int = 0
) -> SampleRow:
    """The line of a sample from its ``run_summary.json`` content."""
    counts = summary["counts"]
    pairs = summary.get("pairs") or {}
    failed = counts["failed"]
    return SampleRow(
        sample=name,
        status="partial" if failed else "complete",
        kind=kind,
        reads=counts["reads"],
        pairs=pairs.get("pairs") if kind == "paired" else None,
        chunks=counts["chunks"],
        orfs=counts["orfs"],
        viral_reads=counts["reads_virus"],
        viral_pairs=pairs.get("virus") if kind == "paired" else None,
        no_orf_reads=counts["reads_no_orf"],
        failed_records=failed,
        orfs_from_run=from_run,
        seconds=seconds,
    )


def _cell(value: Any) -> str:
    if value is None:
        return "NA"
    if isinstance(value, float):
        return f"{value:.6g}"
    return " ".join(str(value).split())  # no tab or newline inside a cell


def samples_tsv(rows: Sequence[SampleRow]) -> str:
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(_cell(row.as_dict()[c]) for c in COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


# MultiQC reads the commented YAML header of a ``*_mqc.tsv`` file: ``generalstats``
# puts its columns into the report's General Statistics table, one row per sample.
_MQC_HEADER = """\
# id: 'virnuc_dask'
# section_name: 'virnuc-dask'
# description: 'viral reads identified by virnuc-dask (VirNucPro method)'
# plot_type: 'generalstats'
# pconfig:
#     - viral_percent:
#         title: '% Viral'
#         description: 'reads predicted viral (percent of the reads)'
#         min: 0
#         max: 100
#         suffix: '%'
#         scale: 'OrRd'
#         format: '{:,.2f}'
#     - viral_reads:
#         title: 'Viral reads'
#         description: 'reads predicted viral'
#         format: '{:,.0f}'
#     - reads:
#         title: 'Reads'
#         description: 'reads classified (each mate counts once)'
#         format: '{:,.0f}'
#         hidden: true
#     - failed_records:
#         title: 'Failed'
#         description: 'records that could not be processed (failed_records.tsv)'
#         format: '{:,.0f}'
#         hidden: true
"""


def multiqc_tsv(rows: Sequence[SampleRow]) -> str:
    """``virnuc_dask_mqc.tsv``: the samples that finished, as MultiQC general statistics."""
    lines = ["Sample\tviral_percent\tviral_reads\treads\tfailed_records"]
    for row in rows:
        if row.status == "failed":
            continue
        percent = 100 * row.viral_fraction if row.viral_fraction is not None else 0.0
        lines.append(
            f"{row.sample}\t{percent:.4f}\t{row.viral_reads}\t{row.reads}\t{row.failed_records}"
        )
    return _MQC_HEADER + "\n".join(lines) + "\n"
