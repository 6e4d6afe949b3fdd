"""The globals a torch checkpoint's pickle names, read without loading it.

A ``.pt`` file is a zip whose ``<root>/data.pkl`` is a pickle (torch's legacy format:
a few pickles one after the other, the tensors' bytes after them). Every class or
function a pickle uses is named by a ``GLOBAL`` or ``STACK_GLOBAL`` opcode;
:func:`pickled_globals` lists them with :mod:`pickletools` (nothing is imported or
called), and :func:`disallowed_globals` keeps those torch's safe (weights-only) loader
would refuse, given the classes this package allows for the file
(:func:`~virnuc_dask.models.safeload.allowing`). A checkpoint that passes loads under
the safe loader; one that does not names what it would need.

>>> import io, pickle, collections
>>> sorted(pickled_globals_of(io.BytesIO(pickle.dumps(collections.OrderedDict(), 2))))
['collections.OrderedDict']
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

# Opcodes that push a string (the module and name of a STACK_GLOBAL come from these).
_STRINGS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
# torch's legacy format starts with this many pickles (magic, protocol, system info,
# the object); the tensors' bytes follow.
LEGACY_PICKLES = 4


def pickled_globals_of(stream: IO[bytes], *, pickles: int = 1) -> set[str]:
    """``module.name`` of every global the first ``pickles`` pickles of ``stream`` use."""
    found: set[str] = set()
    for _ in range(pickles):
        memo: dict[int, object] = {}
        pushed: list[object] = []  # what the last opcodes pushed (strings, else None)
        for opcode, arg, _ in pickletools.genops(stream):
            name = opcode.name
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                found.add(f"{module}.{attr}")
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                module, attr = pushed if len(pushed) == 2 else (None, None)
                found.add(f"{module}.{attr}")
                pushed.append(None)
            elif name in _STRINGS:
                pushed.append(arg)
            elif name in _MEMO_GET:
                pushed.append(memo.get(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in _MEMO_PUT:
                memo[arg] = pushed[-1] if pushed else None
            elif name == "STOP":
                break
            else:
                pushed.append(None)
            del pushed[:-2]
    return found


def pickled_globals(path: str | Path) -> set[str]:
    """The globals of the checkpoint at ``path`` (zip or legacy torch format)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pickles:
                raise ValueError(f"{path}: a zip without data.pkl, not a torch checkpoint")
            found: set[str] = set()
            for member in pickles:
                found |= pickled_globals_of(io.BytesIO(archive.read(member)))
            return found
    with path.open("rb") as stream:
        return pickled_globals_of(stream, pickles=LEGACY_PICKLES)


def allowed_globals(extra: Iterable[object] = ()) -> set[str]:
    """What torch's weights-only loader accepts, plus the classes ``extra``."""
    import torch

    # torch has no public list of its own allowance; read it where torch keeps it.
    from torch._weights_only_unpickler import _get_allowed_globals

    names = set(_get_allowed_globals())
    for obj in [*torch.serialization.get_safe_globals(), *extra]:
        if isinstance(obj, tuple):  # (object, "module.name")
            names.add(obj[1])
        else:
            names.add(f"{obj.__module__}.{obj.__qualname__}")
    return names


def disallowed_globals(path: str | Path, extra: Iterable[object] = ()) -> list[str]:
    """The globals of ``path`` that torch's safe loader, allowing ``extra``, refuses."""
    return sorted(pickled_globals(path) - allowed_globals(extra))
