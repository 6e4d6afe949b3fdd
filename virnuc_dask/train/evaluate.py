"""``evaluate``: a classifier's calls on labelled inputs, at ORF, chunk and read level.

Each class's files are predicted by the prediction dataflow into a directory of their
own (``DIR/viral``, ``DIR/other``: the usual result files, resumable), so that every
row's label is the directory it is in. The metrics are then read back from the
result files:

- ORF: ``prediction_results.txt``; call ``virus`` when score2 > score1 (the file's
  own call), AUC on score2;
- chunk: the ORFs of a chunk; call viral when max(score2) >= max(score1) (the rule of
  ``prediction_results_highestscore.csv``), AUC on max(score2) - max(score1);
- read: ``read_predictions.tsv``; call viral when at least half of its chunks are, AUC
  on the fraction of viral chunks. Reads without ORF or whose ORFs all failed have no
  call: they are counted (``unscored``), not scored.
"""

from __future__ import annotations

import array
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from virnuc_dask.config import Settings
from virnuc_dask.dataflow.pipeline import predict, preflight
from virnuc_dask.dataflow.session import ProgressFactory, run_session
from virnuc_dask.errors import TrainingDataError
from virnuc_dask.events import Progress
from virnuc_dask.files import atomic_write_text
from virnuc_dask.rundir import EVALUATION as JSON
from virnuc_dask.rundir import EVALUATION_TEXT as TEXT
from virnuc_dask.rundir import PREDICTIONS, READS
from virnuc_dask.train.metrics import METRICS, binary_metrics

logger = logging.getLogger(__name__)

LEVELS = ("orf", "chunk", "read")
CLASSES = (("viral", 1), ("other", 0))


@dataclasses.dataclass
class EvaluationResult:
    out: Path
    metrics: dict[str, Any]
    exit_code: int


def _orf_rows(path: Path) -> Iterator[tuple[str, float, float, bool]]:
    with open(path) as fh:
        next(fh)
        for line in fh:
            orf, call, s1, s2 = line.rstrip("\n").split("\t")
            yield orf, float(s1), float(s2), call == "virus"


def level_scores(directory: Path) -> dict[str, tuple[array.array, array.array, int]]:
    """Per level: (scores, calls, unscored items) of one class's prediction directory."""
    orf_s, orf_c = array.array("d"), array.array("b")
    chunk_s, chunk_c = array.array("d"), array.array("b")
    chunk, best = None, (0.0, 0.0)

    def close_chunk() -> None:
        chunk_s.append(best[1] - best[0])
        chunk_c.append(best[1] >= best[0])

    for orf, s1, s2, call in _orf_rows(directory / PREDICTIONS):
        orf_s.append(s2)
        orf_c.append(call)
        if orf[:-2] != chunk:
            if chunk is not None:
                close_chunk()
            chunk, best = orf[:-2], (s1, s2)
        else:
            best = (max(best[0], s1), max(best[1], s2))
    if chunk is not None:
        close_chunk()
    read_s, read_c = array.array("d"), array.array("b")
    unscored = 0
    with open(directory / READS) as fh:
        header = next(fh).rstrip("\n").split("\t")
        col = {name: i for i, name in enumerate(header)}
        for line in fh:
            cells = line.rstrip("\n").split("\t")
            if cells[col["prediction"]] not in ("virus", "others"):
                unscored += 1
                continue
            read_s.append(int(cells[col["virus_chunks"]]) / int(cells[col["chunks_with_orf"]]))
            read_c.append(cells[col["prediction"]] == "virus")
    return {
        "orf": (orf_s, orf_c, 0),
        "chunk": (chunk_s, chunk_c, 0),
        "read": (read_s, read_c, unscored),
    }


def evaluation_metrics(viral_dir: Path, other_dir: Path) -> dict[str, Any]:
    """Metrics per level from the result files of the two classes' predictions."""
    per_class = {1: level_scores(viral_dir), 0: level_scores(other_dir)}
    out: dict[str, Any] = {}
    for level in LEVELS:
        labels = np.concatenate(
            [np.full(len(per_class[v][level][0]), v, dtype=np.int8) for _, v in CLASSES]
        )
        scores = np.concatenate(
            [np.frombuffer(per_class[v][level][0], dtype=np.float64) for _, v in CLASSES]
        )
        calls = np.concatenate(
            [np.frombuffer(per_class[v][level][1], dtype=np.int8) for _, v in CLASSES]
        )
        metrics = binary_metrics(labels, scores, calls)
        metrics["unscored"] = {name: per_class[v][level][2] for name, v in CLASSES}
        out[level] = metrics
    return out


def metrics_text(metrics: dict[str, Any]) -> str:
    """The metrics as a small table, then the confusion matrices."""

    def cell(value: Any) -> str:
        return "NA" if value is None else f"{value:.4f}"

    lines = [f"{'level':<6} {'n':>8} " + " ".join(f"{m:>9}" for m in METRICS)]
    for level in LEVELS:
        m = metrics[level]
        lines.append(f"{level:<6} {m['n']:>8} " + " ".join(f"{cell(m[k]):>9}" for k in METRICS))
    lines.append("")
    lines.append("confusion matrices (viral is the positive class)")
    for level in LEVELS:
        c = metrics[level]["confusion"]
        lines.append(
            f"{level:<6} true other: called other {c['tn']}, called viral {c['fp']}; "
            f"true viral: called other {c['fn']}, called viral {c['tp']}"
        )
    unscored = metrics["read"]["unscored"]
    lines.append(
        f"reads without a call (no ORF, or every ORF failed): viral "
        f"{unscored['viral']}, other {unscored['other']}"
    )
    return "\n".join(lines) + "\n"


def evaluate(
    settings: Settings,
    viral: tuple[str, ...],
    other: tuple[str, ...],
    client: Client,
    *,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Predict each class's files with ``settings.classifier`` and measure the calls."""
    if not viral or not other:
        raise TrainingDataError("evaluation needs files of both classes: --viral and --other")
    out = Path(settings.out)
    runs = {
        name: settings.replace(inputs=files, out=str(out / name))
        for name, files in (("viral", viral), ("other", other))
    }
    for run in runs.values():
        preflight(run)
    exit_code = 0
    summaries = {}
    for name, run in runs.items():
        logger.info("predicting the %s files into %s", name, run.out)
        result = predict(run, client, progress=progress)
        exit_code = max(exit_code, result.exit_code)
        summaries[name] = {"inputs": list(run.inputs), "counts": result.summary["counts"]}
        if result.counts.orfs == 0:
            raise TrainingDataError(f"no usable {name} record: {', '.join(run.inputs)} give no ORF")
    metrics = evaluation_metrics(out / "viral", out / "other")
    document = {
        "classifier": settings.classifier,
        "length": settings.length,
        "classes": summaries,
        "metrics": metrics,
    }
    atomic_write_text(out / JSON, json.dumps(document, indent=2) + "\n")
    atomic_write_text(out / TEXT, metrics_text(metrics))
    return EvaluationResult(out, metrics, exit_code)


def run_evaluation(
    settings: Settings,
    viral: tuple[str, ...],
    other: tuple[str, ...],
    *,
    client: Client | None = None,
    progress: ProgressFactory | None = None,
) -> EvaluationResult:
    """:func:`evaluate` in the run's session (the cluster the settings name unless a client
    is given)."""

    for files, name in ((viral, "viral"), (other, "other")):
        preflight(settings.replace(inputs=files, out=str(Path(settings.out) / name)))
    # The evaluation's directory and the prediction directory of each class in it.
    held = [settings.out, *(str(Path(settings.out) / name) for name, _ in CLASSES)]
    with run_session(settings, client=client, progress=progress, hold=held) as session:
        return evaluate(settings, viral, other, session.client, progress=session.progress)
