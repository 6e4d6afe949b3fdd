"""Rows of a partition that repeat an earlier input (dedup): which rows each model embeds
here, where every row's vectors come from, and which rows take an earlier row's scores.

A row's features are ``[DNABERT-S of its nucleotide slice, ESM-2 of its protein]``;
with dedup each half is the vector of the first row with that input (its *source*,
per model). Three cases:

- every source is the row itself: every model embeds it here;
- every source is one earlier row (a plain copy): its features are that row's, so
  are its scores; it is neither embedded nor scored here, and takes that row's
  scores (``scores_source``), wherever that row lies;
- otherwise each half comes from its source when the source lies in this partition
  (embedded here), and is embedded again here when it lies in an earlier partition
  (whose vectors a run that keeps no embeddings does not store).

Without scoring (training keeps every embedding and reads through the sources), only
first copies are embedded.

>>> first, last = MODEL_KEYS  # nucleotide slice, protein
>>> plan = plan_rows(10, 4, {first: np.array([10, 10, 12, 3]),
...                          last: np.array([10, 10, 10, 13])}, scoring=True)
>>> plan.embed[first].tolist(), plan.embed[last].tolist()
([True, False, True, True], [True, False, False, True])
>>> plan.take[last].tolist(), plan.scores_source.tolist()
([0, 0, 0, 3], [10, 10, 12, 13])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from virnuc_dask.models.registry import MODEL_KEYS


@dataclasses.dataclass(frozen=True)
class RowPlan:
    """Per model: ``embed`` (rows embedded here), ``own`` (rows that are their input's
    first copy) and ``take`` (the partition position whose vector a row uses: itself
    where embedded here); ``copies``: rows that take ``scores_source``'s scores."""

    embed: dict[str, np.ndarray]
    own: dict[str, np.ndarray]
    take: dict[str, np.ndarray]
    copies: np.ndarray
    scores_source: np.ndarray


def plan_rows(
    row_start: int, rows: int, sources: Mapping[str, np.ndarray] | None, *, scoring: bool
) -> RowPlan:
    """The :class:`RowPlan` of rows ``[row_start, row_start + rows)``; ``sources``: per
    model, the global row whose vector each row takes (None: no dedup)."""
    here = np.arange(row_start, row_start + rows, dtype=np.int64)
    positions = np.arange(rows, dtype=np.int64)
    if sources is None:
        every = np.ones(rows, dtype=bool)
        return RowPlan(
            {m: every for m in MODEL_KEYS},
            {m: every for m in MODEL_KEYS},
            {m: positions for m in MODEL_KEYS},
            np.zeros(rows, dtype=bool),
            here,
        )
    source = {m: np.asarray(sources[m], dtype=np.int64) for m in MODEL_KEYS}
    first = source[MODEL_KEYS[0]]
    copies = np.zeros(rows, dtype=bool)
    if scoring:
        copies = first != here
        for m in MODEL_KEYS[1:]:
            copies &= source[m] == first
    embed, own, take = {}, {}, {}
    for m in MODEL_KEYS:
        own[m] = source[m] == here
        earlier = source[m] < row_start
        embed[m] = own[m] | (earlier & ~copies) if scoring else own[m]
        inside = ~embed[m] & ~earlier
        take[m] = np.where(inside, source[m] - row_start, positions)
    return RowPlan(embed, own, take, copies, np.where(copies, first, here))
