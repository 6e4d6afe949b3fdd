"""The prediction from Python (notebooks, scripts): the same dataflow as ``virnuc-dask predict``.

:func:`predict` takes a ``distributed.Client`` (or starts the cluster the settings
ask for, as the CLI does), runs the pipeline and returns a :class:`Prediction`:
the output paths, the counts and run summary, and lazy Dask arrays read from
``embeddings.zarr`` for the ORF ids and the scores, and for both embeddings when the
run kept them (``keep_embeddings=True``). Nothing is loaded into memory until you
compute it.

>>> from distributed import Client, LocalCluster
>>> from virnuc_dask import predict
>>> client = Client(LocalCluster(n_workers=1, resources={"GPU": 1}))  # doctest: +SKIP
>>> result = predict("reads.fa", out="results", classifier="500_model.pth",
...                  client=client)  # doctest: +SKIP
>>> result.scores[:, 1].mean().compute()  # doctest: +SKIP
>>> result.paths["predictions"]  # doctest: +SKIP
PosixPath('results/prediction_results.txt')
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import zarr
from distributed import Client

from virnuc_dask.config import ConfigError, load_settings
from virnuc_dask.dataflow.outputs import BlockCounts
from virnuc_dask.dataflow.store import SCORES, lazy_rows
from virnuc_dask.events import Progress
from virnuc_dask.models import MODEL_KEYS
from virnuc_dask.rundir import FAILED, HIGHEST, PREDICTIONS, READS, SAMPLES, STORE, SUMMARY

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What a run produced: files under ``out`` and lazy arrays over its Zarr store.

    Rows of ``ids``, ``embeddings`` and ``scores`` are ORFs in input order (the rows
    of ``prediction_results.txt``). ``scores[:, 0]`` is P(others), ``scores[:, 1]``
    P(virus). ``exit_code`` follows the CLI: 0 complete, 2 some records failed.
    """

    out: Path
    exit_code: int
    counts: BlockCounts
    summary: dict[str, Any]
    dashboard_link: str | None = None

    @property
    def paths(self) -> dict[str, Path]:
        return {
            "predictions": self.out / PREDICTIONS,
            "highest_scores": self.out / HIGHEST,
            "reads": self.out / READS,
            "failed": self.out / FAILED,
            "summary": self.out / SUMMARY,
            "embeddings": self.out / STORE,
        }

    def _array(self, name: str) -> da.Array:
        return da.from_zarr(str(self.paths["embeddings"]), component=name)

    @property
    def ids(self) -> da.Array:
        """ORF ids (``{read}_chunk_{k}{F1..R3}``), one per row."""
        return self._array("ids")

    @property
    def embeddings(self) -> dict[str, da.Array]:
        """Per embedding model (by key) its rows: ``[rows, 768]`` for DNABERT-S, ``[rows,
        2560]`` for ESM-2 with the published models, when the run kept them
        (``keep_embeddings=True``; else a ``ValueError``)."""
        group = zarr.open_group(self.paths["embeddings"], mode="r")
        if group.attrs.get("embeddings") is None:
            raise ValueError(
                f"{self.paths['embeddings']} keeps no embeddings: run predict with "
                "keep_embeddings=True (the command line's --keep-embeddings) to keep them"
            )
        return {name: lazy_rows(self.paths["embeddings"], name) for name in MODEL_KEYS}

    @property
    def features(self) -> da.Array:
        """The classifier's input: DNABERT-S then ESM-2 columns."""
        return da.concatenate(list(self.embeddings.values()), axis=1)

    @property
    def scores(self) -> da.Array:
        """Softmax of the classifier, ``[rows, 2]``: P(others), P(virus)."""
        return lazy_rows(self.paths["embeddings"], SCORES)


def predict(
    inputs: PathLike | Sequence[PathLike] | None = None,
    *,
    out: PathLike,
    samplesheet: PathLike | None = None,
    samples: Mapping[str, Sequence[PathLike]] | None = None,
    write_viral_reads: bool = False,
    classifier: PathLike | None = None,
    client: Client | None = None,
    config: PathLike | None = None,
    performance_report: PathLike | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Prediction | SequencingRun:
    """Run the prediction of ``inputs`` into ``out``; see :class:`Prediction`.

    Or a sequencing run: ``samplesheet`` (a CSV file: ``sample,fastq_1,fastq_2[,fasta]``)
    or ``samples`` (``{"S1": ["S1_R1.fastq.gz", "S1_R2.fastq.gz"], "S2": ["S2.fa"]}``;
    two mate files one after the other are a pair), every sample into ``out/<sample>``
    on one cluster; see :class:`SequencingRun`. ``write_viral_reads``: also write the
    viral reads' input records (``viral_reads.fastq.gz``, per sample).

    ``options`` are the settings of ``configs/default.yaml`` by name (``length=300``,
    ``esm_model=...``, ``precision="fp32"``, ``model_cache=...``, ``offline=True``,
    ``cluster="slurm"``, ``jobs=4`` ...); ``config`` a YAML file of them. Explicit
    arguments override the file. Without ``client`` the cluster the settings name is
    started for this run and stopped after it (the returned arrays read from disk
    and need no cluster). ``performance_report``: an HTML file for Dask's report.
    ``progress``: called with each :class:`~virnuc_dask.events.ProgressEvent` of the run.
    """
    from virnuc_dask.dataflow.run import run_prediction

    if (inputs is None) + (samplesheet is None) + (samples is None) != 2:
        raise ConfigError("give one of inputs, samplesheet or samples")
    if inputs is None:
        return _predict_samples(
            samplesheet,
            samples,
            out=out,
            classifier=classifier,
            client=client,
            config=config,
            performance_report=performance_report,
            progress=progress,
            viral_reads=write_viral_reads,
            **options,
        )
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    overrides = {
        **options,
        "out": os.fspath(out),
        "classifier": None if classifier is None else os.fspath(classifier),
        "performance_report": None if performance_report is None else os.fspath(performance_report),
    }
    settings = load_settings(
        inputs=[os.fspath(p) for p in paths], config_file=config, overrides=overrides
    ).with_absolute_paths()
    result, link = run_prediction(
        settings,
        client=client,
        progress=None if progress is None else lambda _: contextlib.nullcontext(progress),
    )
    if write_viral_reads:
        from virnuc_dask.dataflow.viral_reads import write_viral_reads as write_reads

        write_reads(result.out, settings.inputs)
    return Prediction(
        out=Path(result.out),
        exit_code=result.exit_code,
        counts=result.counts,
        summary=result.summary,
        dashboard_link=link,
    )


@dataclasses.dataclass(frozen=True)
class SequencingRun:
    """What a sequencing run produced: a :class:`Prediction` per sample (None for a
    sample that failed: ``rows`` says why), the lines of ``samples.tsv`` as dicts, and
    the run's summary. ``exit_code``: 0 complete, 2 some records failed, 1 a sample failed.
    """

    out: Path
    exit_code: int
    samples: dict[str, Prediction | None]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    dashboard_link: str | None = None

    @property
    def table(self) -> Path:
        """``samples.tsv``: one line per sample."""
        return self.out / SAMPLES


def _predict_samples(
    samplesheet: PathLike | None,
    samples: Mapping[str, Sequence[PathLike]] | None,
    *,
    out: PathLike,
    classifier: PathLike | None,
    client: Client | None,
    config: PathLike | None,
    performance_report: PathLike | None,
    progress: Progress | None,
    viral_reads: bool,
    **options: Any,
) -> SequencingRun:
    from virnuc_dask.core.samplesheet import read_samplesheet, samples_from_files
    from virnuc_dask.dataflow.sequencing_run import run_samples

    sheet = (
        read_samplesheet(samplesheet) if samplesheet is not None else samples_from_files(samples)
    )
    overrides = {
        **options,
        "out": os.fspath(out),
        "classifier": None if classifier is None else os.fspath(classifier),
        "performance_report": None if performance_report is None else os.fspath(performance_report),
    }
    settings = load_settings(
        inputs=[f for s in sheet for f in s.inputs], config_file=config, overrides=overrides
    ).with_absolute_paths()
    result, link = run_samples(
        settings,
        sheet,
        client=client,
        progress=None if progress is None else lambda _: contextlib.nullcontext(progress),
        viral_reads=viral_reads,
    )
    return SequencingRun(
        out=Path(result.out),
        exit_code=result.exit_code,
        samples={
            name: None
            if one is None
            else Prediction(
                out=Path(one.out), exit_code=one.exit_code, counts=one.counts, summary=one.summary
            )
            for name, one in result.results.items()
        },
        rows=[row.as_dict() for row in result.rows],
        summary=result.summary,
        dashboard_link=link,
    )
