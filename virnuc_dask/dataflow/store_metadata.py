"""Checksums of the store's own metadata: every ``zarr.json`` (the group's, with the
run's fingerprint, and each array's shape, dtype and codecs).

Chunks carry their own CRC-32C; the metadata that says how to decode them does not.
:func:`record` writes the SHA-256 and the text of every other ``zarr.json`` of the
store into the attributes of a group of its own (``checksums/zarr.json``, a node Zarr
knows, so that the store stays a plain Zarr hierarchy), each time the store writes them
(created, resized at the end of a run, embeddings dropped, arrays added by training).
:func:`verify`, run before a store is resumed, compares every ``zarr.json`` with the
record:

- a file that differs from its recorded checksum (edited, a bit flipped, cut short)
  or is missing is put back from the recorded text, when that text still has its
  checksum, and named in the log and the run summary;
- a node the record does not know (added by a run stopped before it recorded it) is
  removed;
- when the record itself is missing or damaged, or a file cannot be put back, the
  store cannot be trusted: :func:`verify` says so and the run starts a new store.

A metadata file is never used unchecked.

>>> import tempfile, zarr
>>> store = Path(tempfile.mkdtemp()) / "s.zarr"
>>> _ = zarr.open_group(store, mode="w").create_array("a", shape=(4,), dtype="int8")
>>> record(store)
>>> _ = (store / "a" / "zarr.json").write_text("{}")
>>> [(p.file, p.restored) for p in verify(store)]
[('a/zarr.json', True)]
>>> verify(store)
[]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from virnuc_dask.files import atomic_write_text

METADATA = "zarr.json"
#: The record: a group's metadata file, relative to the store.
RECORD = f"checksums/{METADATA}"


@dataclasses.dataclass(frozen=True)
class MetadataProblem:
    """A metadata file (relative to the store) that failed its check, what was wrong,
    and whether it was put back from the record."""

    file: str
    problem: str
    restored: bool

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def _files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob(METADATA) if p != store / RECORD)


def record(store: str | os.PathLike[str]) -> None:
    """Record the checksum and text of every ``zarr.json`` under ``store``."""
    store = Path(store)
    files = {}
    for path in _files(store):
        data = path.read_bytes()
        files[path.relative_to(store).as_posix()] = {
            "sha256": _digest(data),
            "text": data.decode(),
        }
    group = {"zarr_format": 3, "node_type": "group", "attributes": {"files": files}}
    (store / RECORD).parent.mkdir(exist_ok=True)
    atomic_write_text(store / RECORD, json.dumps(group))


def verify(store: str | os.PathLike[str]) -> list[MetadataProblem]:
    """Check every ``zarr.json`` of ``store`` against its record; put back what can be
    put back. The problems found (empty: all is as recorded); one with
    ``restored=False`` means the store must not be used."""
    store = Path(store)
    try:
        files = json.loads((store / RECORD).read_text())["attributes"]["files"]
        if not isinstance(files, dict):
            raise TypeError("no table of files")
    except FileNotFoundError:
        return [MetadataProblem(RECORD, "missing", False)]
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError) as exc:
        return [MetadataProblem(RECORD, f"unreadable: {exc}", False)]
    problems = []
    for name in sorted(set(files) | {p.relative_to(store).as_posix() for p in _files(store)}):
        path = store / name
        entry = files.get(name)
        if entry is None:  # a node added after the record was written (cut short)
            shutil.rmtree(path.parent, ignore_errors=True)
            problems.append(MetadataProblem(name, "not in the record: removed", True))
            continue
        try:
            found = _digest(path.read_bytes())
        except OSError as exc:
            found, why = None, f"unreadable ({exc.strerror or exc})"
        else:
            why = "differs from its recorded checksum"
        if found == entry.get("sha256"):
            continue
        text = entry.get("text")
        if not isinstance(text, str) or _digest(text.encode()) != entry.get("sha256"):
            problems.append(MetadataProblem(name, f"{why}; its record is damaged", False))
            continue
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            problems.append(MetadataProblem(name, f"{why}; cannot be put back: {exc}", False))
            continue
        problems.append(MetadataProblem(name, why, True))
    return problems
