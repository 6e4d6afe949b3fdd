"""What ``bench`` and its original-style comparison share: the generated input, the
models it builds, ORF tables of an input, a timer and the device's synchronisation."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from virnuc_dask.models.registry import EMBEDDING_MODELS


def write_bench_input(path: Path, reads: int, *, seed: int = 2000) -> Path:
    """Coding-like reads of 400-600 bp, like the reference perf inputs."""
    from virnuc_dask.models.demo import example_reads, write_fasta

    write_fasta(path, example_reads(reads, seed, min_length=400, max_length=600, random_every=0))
    return path


def build_models(directory: Path, size: str, **given: str | None) -> dict[str, str]:
    """Model files in the real formats, by setting (``esm_model``, ...): the ``given``
    ones, else random ones of ``size``; and a random classifier for their widths."""
    from virnuc_dask.models.demo import build_classifier

    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    width = 0
    for m in EMBEDDING_MODELS:
        source = given.get(m.source_setting)
        if source is None:
            # The width from the layout, not read back: with --size real an 11 GB load.
            built, dim = m.build_random(directory, size)
            source = str(built)
        else:
            dim = m.load_adapter(source).width
        paths[m.source_setting] = source
        width += dim
    classifier = build_classifier(directory / "mlp_bench.pth", input_dim=width)
    return {**paths, "classifier": str(classifier)}


def read_orfs_of(path: str, length: int) -> tuple[int, list]:
    """(reads, ORFs) of a FASTA file, read and translated here."""
    from virnuc_dask.core.formats import plan_blocks, read_block
    from virnuc_dask.core.orfs import orfs_from_records

    records = [r for block in plan_blocks([path]) for r in read_block(block)]
    return len(records), orfs_from_records(records, length).orfs


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_device(device: torch.device) -> None:
    """Hand this process's cached GPU memory back, for the workers (same GPUs) and the
    models loaded next: with the real sizes, two copies do not fit."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()


@contextlib.contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    into[key] = time.perf_counter() - t
