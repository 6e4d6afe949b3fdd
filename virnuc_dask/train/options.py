"""The hyper-parameters of a training, validated (importable without torch)."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["TrainOptions"]


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters; defaults as the original ``train.py``."""

    seed: int = 42
    epochs: int = 200
    batch_size: int = 32
    lr: float = 2e-4
    momentum: float = 0.9
    step_size: int = 10
    gamma: float = 0.85
    patience: int = 5
    min_delta: float = 0.0
    validation: float = 0.1
    hidden: int = 512
    shuffle_window: int = 4

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "step_size", "patience", "hidden", "shuffle_window"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (batch normalisation)")
        if not 0 < self.validation < 1:
            raise ValueError(f"validation must be a fraction in (0, 1), got {self.validation}")
        for key in ("lr", "gamma"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
