"""Exceptions the command line maps to exit codes and one-line messages."""

from __future__ import annotations


class VirnucError(Exception):
    """An expected failure with a message for the user (exit code 1, no traceback)."""


class ModelLoadError(VirnucError, RuntimeError):
    """A model file is missing, unreadable or not the expected model."""


class OutputDirError(VirnucError):
    """The output directory cannot be used (unwritable, holds a different run, ...)."""


class SystemicFailure(VirnucError):
    """Consecutive batches failed: the fault is not in the records (weights, driver, ...)."""
