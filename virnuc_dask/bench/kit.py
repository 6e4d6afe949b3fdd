"""What ``bench`` and its original-style comparison share: the generated input, the
models it builds, ORF tables of an input, a timer and the device's synchronisation."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from virnuc_dask.models.sizes import SIZES


def write_bench_input(path: Path, reads: int, *, seed: int = 2000) -> Path:
    """Coding-like reads of 400-600 bp, like the reference perf inputs."""
    from virnuc_dask.models.demo import example_reads, write_fasta

    write_fasta(path, example_reads(reads, seed, min_length=400, max_length=600, random_every=0))
    return path


def build_models(
    directory: Path, size: str, *, esm_model: str | None = None, dnabert_model: str | None = None
) -> dict[str, str]:
    """Model files in the real formats: given ones, else random ones of ``size``; and a
    random classifier for their embedding widths."""
    from virnuc_dask.models.demo import build_classifier, build_dnabert, build_esm
    from virnuc_dask.models.dnabert import resolve_dnabert_dir
    from virnuc_dask.models.dnabert_encoder import DnabertConfig
    from virnuc_dask.models.esm2 import load_esm

    directory.mkdir(parents=True, exist_ok=True)
    shape = SIZES[size]
    if esm_model is None:
        e = shape["esm"]
        esm_model = str(build_esm(directory / f"esm2_t{e['layers']}_{e['dim']}_bench.pt", **e))
        esm_dim = e["dim"]  # not read back: with --size real that is an 11 GB load
    else:
        esm_dim = load_esm(esm_model)[0].embed_dim
    if dnabert_model is None:
        d = shape["dnabert"]
        dnabert_model = str(build_dnabert(directory / "dnabert_s_bench", **d))
    dnabert_dim = DnabertConfig.from_json(
        resolve_dnabert_dir(dnabert_model) / "config.json"
    ).hidden_size
    classifier = build_classifier(directory / "mlp_bench.pth", input_dim=dnabert_dim + esm_dim)
    return {"esm_model": esm_model, "dnabert_model": dnabert_model, "classifier": str(classifier)}


def read_orfs_of(path: str, length: int) -> tuple[int, list]:
    """(reads, ORFs) of a FASTA file, read and translated here."""
    from virnuc_dask.core.fasta import plan_blocks, read_block
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
