"""Files on disk: replacing a file in one step, and telling gzip data by its first bytes.

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "summary.json"
>>> atomic_write_text(target, "{}\\n")
>>> target.read_text(), is_gzip(target)
('{}\\n', False)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """A file to write that replaces ``path`` in one step when the block ends without an
    error (flushed and synced first): readers see the old file or the new one, never a
    part. On an error the partial file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` in one step: readers see the old or the new file."""
    with atomic_writer(path) as fh:
        fh.write(text)


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC
