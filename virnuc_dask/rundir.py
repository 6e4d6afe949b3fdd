"""The run directory (``--out``): the name of every file a run writes, in one place.

| name | content |
|---|---|
| ``prediction_results.txt`` | the original's per-ORF scores |
| ``prediction_results_highestscore.csv`` | the original's per-chunk verdicts |
| ``read_predictions.tsv`` | one row per input read (mates of a pair: ``<id>/1``, ``<id>/2``) |
| ``pair_predictions.tsv`` | paired reads: one row per pair |
| ``failed_records.tsv`` | records that could not be processed |
| ``run_summary.json`` | what the run did, how fast, where |
| ``embeddings.zarr/`` | the embeddings and scores (the resume state, with ``partitions/``) |
| ``.scratch/`` | while a run lasts: its ORF tables and dedup index, rebuilt by every run |

A ``train`` directory holds ``embeddings.zarr/`` and ``partitions/`` too (with labels and
the validation split), and:

| name | content |
|---|---|
| ``model.pth`` | the trained classifier (a pickled ``__main__.MLPClassifier``) |
| ``training_log.tsv`` | one line per epoch |
| ``training_summary.json`` | data, split, options, best epoch and its metrics |
| ``training/`` | the checkpoint of the last finished epoch and what it was trained on |

A sequencing run's directory (``predict --samplesheet``) holds one such directory per
sample (``<sample>/``) and:

| name | content |
|---|---|
| ``samples.tsv`` | one line per sample: reads, pairs, chunks, ORFs, viral reads ... |
| ``virnuc_dask_mqc.tsv`` | the same figures as a MultiQC custom-content general-stats table |
| ``run_summary.json`` | the run: samplesheet, samples and their status, models, timings |
| ``.run-scores/`` | scores by ORF content, which samples take from each other |

An ``evaluate`` directory holds one prediction run directory per class (``viral/``,
``other/``), ``evaluation.json`` and ``evaluation.txt``.
"""

from __future__ import annotations

PREDICTIONS = "prediction_results.txt"
HIGHEST = "prediction_results_highestscore.csv"
READS = "read_predictions.tsv"
PAIRS = "pair_predictions.tsv"
FAILED = "failed_records.tsv"
SUMMARY = "run_summary.json"
STORE = "embeddings.zarr"
MANIFEST = "partitions"
SCRATCH = ".scratch"
VIRAL_READS = "viral_reads"  # + ".fastq.gz" or ".fasta.gz"

SAMPLES = "samples.tsv"
MULTIQC = "virnuc_dask_mqc.tsv"
RUN_SCORES = ".run-scores"

MODEL = "model.pth"
TRAINING_LOG = "training_log.tsv"
TRAINING_SUMMARY = "training_summary.json"
TRAINING_STATE = "training"
EVALUATION = "evaluation.json"
EVALUATION_TEXT = "evaluation.txt"
