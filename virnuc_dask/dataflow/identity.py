"""A run's identity: digests of its inputs and models and the settings that decide its
numbers (the fingerprint a resumed run must match), the output directory it may use, and
the store it resumes (or starts afresh)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from virnuc_dask.config import Settings
from virnuc_dask.dataflow import store_metadata
from virnuc_dask.dataflow.outputs import remove_results
from virnuc_dask.dataflow.store import STORE_FORMAT, EmbeddingStore
from virnuc_dask.dataflow.store_metadata import MetadataProblem
from virnuc_dask.errors import OutputDirError

logger = logging.getLogger(__name__)


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _sampled_digest(path: Path, *, whole: int = 64 << 20, samples: int = 8) -> str:
    """SHA-256 of a file, or for a file over ``whole`` bytes of its size and evenly spaced
    1 MiB samples: any other checkpoint (even of the same shape) differs in every sample,
    and a 6 GB model is identified in milliseconds."""
    size = path.stat().st_size
    if size <= whole:
        return file_digest(str(path))
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for k in range(samples):
            fh.seek((size - (1 << 20)) * k // (samples - 1))
            digest.update(fh.read(1 << 20))
    return f"sampled:{digest.hexdigest()}"


def _model_identity(source: str) -> str:
    """A model by content (a local file or directory, wherever it lies) or by hub name."""
    path = Path(source).expanduser()
    if path.is_file():
        return _sampled_digest(path)
    if path.is_dir():
        return ",".join(
            f"{p.name}={_sampled_digest(p)}" for p in sorted(path.iterdir()) if p.is_file()
        )
    return source


def fingerprint(settings: Settings, precision: str) -> dict[str, Any]:
    """What must be equal for a stored partition to be reused."""
    return {
        "inputs": [
            {"path": str(Path(p).resolve()), "sha256": file_digest(p)} for p in settings.inputs
        ],
        "length": settings.length,
        "esm_model": _model_identity(settings.esm_model),
        "dnabert_model": _model_identity(settings.dnabert_model),
        "classifier": file_digest(settings.classifier) if settings.classifier else None,
        "precision": precision,
        "partition_rows": settings.partition_rows,
        "blocksize": settings.blocksize,
        "dedup": settings.dedup,
        "store_format": STORE_FORMAT,
    }


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def prepare_out(settings: Settings) -> Path:
    out = Path(settings.out)
    probe = out / f".write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(probe, "w") as fh:
            fh.write("ok")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputDirError(
            f"{out}: cannot write in the output directory: {exc.strerror}"
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    return out


@dataclasses.dataclass(frozen=True)
class OpenedStore:
    """The store a run writes into: ``created`` by this run (else resumed), and the
    metadata files that failed their check (put back, or the store started afresh)."""

    store: EmbeddingStore
    created: bool
    metadata: tuple[MetadataProblem, ...] = ()


def open_store(
    settings: Settings, fp: dict[str, Any], *, dims: dict[str, int], dedup: bool, classes: int = 2
) -> OpenedStore:
    """The store under ``settings.out``: the existing one when its fingerprint is ``fp``
    (its finished partitions are reused), a new one when there is none or with
    ``settings.overwrite``. Raises :class:`OutputDirError` for a store of another run.

    The store's metadata is checked first (:mod:`~virnuc_dask.dataflow.store_metadata`):
    files that fail are put back from their record, or, where they cannot be, the store
    is started afresh; both are logged. A store that kept embeddings, resumed by a run
    that keeps none, loses them (nothing is recomputed); a store without the embeddings
    the run keeps (or in another dtype) is started afresh. Both are logged."""
    out = Path(settings.out)
    store = EmbeddingStore(out)
    keep = settings.kept_embeddings
    problems: tuple[MetadataProblem, ...] = ()
    if store.exists() and not settings.overwrite:
        problems = tuple(store_metadata.verify(store.path))
        for problem in problems:
            logger.warning(
                "%s: %s: %s",
                store.path / problem.file,
                problem.problem,
                "put back from its record"
                if problem.restored
                else "the store cannot be trusted; it is started afresh, every partition "
                "is computed again",
            )
    if store.exists() and not settings.overwrite and all(p.restored for p in problems):
        diffs = fingerprint_differences(store.fingerprint, fp)
        if diffs:
            raise OutputDirError(
                f"{out} holds a run with different {', '.join(diffs)}; "
                "use another --out, or --overwrite to start afresh"
            )
        kept = store.embeddings
        if kept == keep:
            return OpenedStore(store, False, problems)
        done = len(store.done_partitions())
        if keep is None:
            logger.warning(
                "%s kept the %s embeddings of its %d finished partitions; this run keeps "
                "none: they are removed, nothing is recomputed",
                out,
                kept,
                done,
            )
            store.drop_embeddings()
            return OpenedStore(store, False, problems)
        logger.warning(
            "%s kept %s: its %d finished partitions are all computed again to keep %s embeddings",
            out,
            "no embeddings" if kept is None else f"{kept} embeddings",
            done,
            keep,
        )
    # Results of the run being replaced must not outlive it next to the new store.
    remove_results(out)
    created = EmbeddingStore.create(
        out,
        rows=None,
        dims=dims,
        chunk_rows=settings.partition_rows,
        classes=classes,
        fingerprint=fp,
        dedup=dedup,
        embeddings=keep,
    )
    return OpenedStore(created, True, problems)
