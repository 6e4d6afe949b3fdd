"""torch's safe (weights-only) loading with a few named classes allowed, one load at a time.

``torch.serialization.safe_globals`` changes process-wide state and restores it on
exit: two threads inside it at once (the workers of an in-process cluster loading
their models) withdraw each other's allowance midway, and a load fails with "Weights
only load failed". Every scoped allowance of this package goes through
:func:`allowing`, which holds one lock for the duration of the load::

    with allowing([argparse.Namespace]):
        data = torch.load(path, map_location="cpu", weights_only=True)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

_LOCK = threading.RLock()


@contextlib.contextmanager
def allowing(classes: list[Any]) -> Iterator[None]:
    """Inside, torch's safe loading also accepts ``classes``; no other thread's loads."""
    with _LOCK, torch.serialization.safe_globals(classes):
        yield
