"""The result of one ``virnuc-dask doctor`` check: its key, whether it passed, the figure
in words and the details that go into the JSON document."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Check:
    """One line of the report: ``key``, passed or not, the figure in words, details."""

    key: str
    ok: bool
    text: str
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "text": self.text, **self.detail}
