"""What a training run is given: the labelled input files (``--viral``, ``--other``),
the optional reference proteins, and the checks made on them before and while reading."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from virnuc_dask.config import Settings
from virnuc_dask.core.formats import check_input
from virnuc_dask.dataflow.identity import prepare_out
from virnuc_dask.errors import TrainingDataError


@dataclasses.dataclass(frozen=True)
class TrainInputs:
    """The labelled input files and the optional reference proteins."""

    viral: tuple[str, ...]
    other: tuple[str, ...]
    protein_reference: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.viral or not self.other:
            raise TrainingDataError("training needs files of both classes: --viral and --other")
        both = sorted(set(self.viral) & set(self.other))
        if both:
            raise TrainingDataError(f"{', '.join(both)}: given as both --viral and --other")

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.viral, *self.other)

    def selection_summary(self) -> dict[str, Any]:
        if self.protein_reference:
            return {
                "mode": "protein reference",
                "description": "stop-free frames whose protein is a substring of a "
                "reference protein; chunks with ambiguous bases dropped",
                "protein_reference": list(self.protein_reference),
            }
        return {
            "mode": "every stop-free frame",
            "description": "no --protein-reference given: every stop-free frame is kept "
            "(the original keeps only frames found in the genomes' annotated proteins); "
            "chunks with ambiguous bases dropped",
            "protein_reference": [],
        }


def train_inputs(
    viral: Sequence[str], other: Sequence[str], protein_reference: Sequence[str] = ()
) -> TrainInputs:
    """:class:`TrainInputs` with absolute paths (workers may run in another directory)."""

    def absolute(paths: Sequence[str]) -> tuple[str, ...]:
        return tuple(os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths)

    return TrainInputs(absolute(viral), absolute(other), absolute(protein_reference))


def preflight_training(settings: Settings, inputs: TrainInputs) -> None:
    """Cheap checks before a cluster starts: input and reference files, output directory."""
    for path in inputs.files:
        check_input(path)
    for path in inputs.protein_reference:
        check_input(path)
    prepare_out(settings)


def check_classes(inputs: TrainInputs, blocks: list, counts: list[int]) -> None:
    """Refuse inputs of which a class gives no ORF (before anything is embedded)."""
    orfs = {"viral": 0, "other": 0}
    viral = set(inputs.viral)
    for block, n in zip(blocks, counts, strict=True):
        orfs["viral" if block.path in viral else "other"] += n
    for name, files in (("viral", inputs.viral), ("other", inputs.other)):
        if not orfs[name]:
            raise TrainingDataError(
                f"no usable {name} record: {', '.join(files)} give no ORF in training mode "
                "(empty, unreadable records, chunks with ambiguous bases, or no frame in the "
                "protein reference)"
            )
