"""Every exception of the project, in one place.

User-facing failures subclass :class:`VirnucError`: the command line prints them as one
line and exits 1 (no traceback unless ``--debug``). Anything else is a bug and is
reported as an internal error.
"""

from __future__ import annotations


class VirnucError(Exception):
    """An expected failure with a message for the user (exit code 1, no traceback)."""


class ModelLoadError(VirnucError, RuntimeError):
    """A model file is missing, unreadable or not the expected model."""


class OutputDirError(VirnucError):
    """The output directory cannot be used (unwritable, holds a different run, ...)."""


class SystemicFailure(VirnucError):
    """Consecutive batches failed: the fault is not in the records (weights, driver, ...)."""


class DeviceError(VirnucError):
    """A worker cannot use the device it was started for."""


class ConfigError(VirnucError, ValueError):
    """A configuration value or file is not acceptable."""


class InputFormatError(VirnucError, ValueError):
    """An input file cannot be read: ``"<path>: line <n>: record '<id>': <problem>"``."""

    def __init__(self, path: str, line: int | None, record: str | None, problem: str) -> None:
        self.path, self.line, self.record, self.problem = path, line, record, problem
        parts = [str(path)]
        if line is not None:
            parts.append(f"line {line}")
        if record is not None:
            parts.append(f"record '{record}'")
        super().__init__(": ".join([*parts, problem]))

    def __reduce__(self):  # keep the attributes across pickling (Dask workers)
        return (type(self), (self.path, self.line, self.record, self.problem))


class FastaFormatError(InputFormatError):
    """The input is not readable FASTA (where, what)."""


class FastqFormatError(InputFormatError):
    """The input is not readable FASTQ (where, what)."""


class TrainingDataError(VirnucError):
    """Labelled inputs that cannot train or evaluate a classifier (a class without usable
    record, a file given for both classes, too few rows to hold out a validation set)."""


class ReportError(VirnucError):
    """The output directory does not hold what a report needs."""


def first_line(exc: BaseException) -> str:
    """The exception's message on one line (its type's name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split("\n"))


class ClusterError(VirnucError):
    """The cluster cannot run the work: a job was rejected or ended, no worker came."""


class StoreDamaged(VirnucError):
    """Stored data failed its checksum (a torn write, a bad disk block)."""


class SampleSheetError(VirnucError, ValueError):
    """A samplesheet that cannot describe a run: ``"<sheet>: line <n>: <problem>"``."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}: line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # keep the attributes across pickling
        return (type(self), (self.path, self.line, self.problem))
