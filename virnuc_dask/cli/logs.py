"""Log handlers of the command line, and worker log records forwarded to it.

Verbosity: ``quiet`` (warnings and errors), ``normal`` (what the run does),
``verbose`` (also Dask's own messages and the workers' informational records),
``debug`` (everything, tracebacks). A log file, when given, receives at least the
``normal`` messages whatever the terminal shows.

Records logged on a worker under ``virnuc_dask`` reach the client through
``Client.forward_logging`` and are shown with the worker's address.

>>> configure("quiet")
>>> logging.getLogger("virnuc_dask").getEffectiveLevel() == logging.WARNING
True
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings

VERBOSITIES = ("quiet", "normal", "verbose", "debug")
LEVELS = {
    "quiet": logging.WARNING,
    "normal": logging.INFO,
    "verbose": logging.INFO,
    "debug": logging.DEBUG,
}
THIRD_PARTY = ("distributed", "bokeh", "tornado", "asyncio")
FORMAT = "%(asctime)s %(levelname)s %(name)s%(origin)s: %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so a live display that
    redirects stderr prints log records above itself instead of through it."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Origin(logging.Filter):
    """Adds ``origin``: `` [worker address]`` for records forwarded from a worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        worker = getattr(record, "worker", None)
        record.origin = f" [{worker}]" if worker else ""
        return True


class _InterruptedSync(logging.Filter):
    """Drops the traceback distributed's ``sync()`` leaves when Ctrl-C arrives before the
    call it waits on has started: its ``cancel`` callback reads a variable not yet set
    and the event loop logs the ``NameError`` (a harmless race inside distributed; the
    interruption itself is reported by the command line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not isinstance(record.exc_info[1], NameError):
            return True
        tb = record.exc_info[2]
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code if tb is not None else None
        return not (
            code is not None
            and code.co_name == "cancel"
            and code.co_filename.replace("\\", "/").endswith("distributed/utils.py")
        )


def configure(verbosity: str = "normal", log_file: str | None = None) -> None:
    """Install the command line's handlers on the root logger (replacing earlier ones)."""
    if verbosity not in LEVELS:
        raise ValueError(f"verbosity must be one of {', '.join(VERBOSITIES)}, got {verbosity!r}")
    level = LEVELS[verbosity]
    formatter = logging.Formatter(FORMAT, datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [_CurrentStderr()]
    handlers[0].setLevel(level)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setLevel(min(level, logging.INFO))
        handlers.append(file_handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_Origin())
        handler.addFilter(_InterruptedSync())
    logging.basicConfig(level=min(h.level for h in handlers), handlers=handlers, force=True)
    logging.getLogger("virnuc_dask").setLevel(min(h.level for h in handlers))
    third_party = logging.INFO if verbosity in ("verbose", "debug") else logging.ERROR
    for name in THIRD_PARTY:
        # distributed, when imported before this, gave these loggers handlers of its own
        # and stopped propagation; route them through the handlers above instead
        lg = logging.getLogger(name)
        lg.setLevel(third_party)
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
        lg.propagate = True
    logging.captureWarnings(True)
    if third_party == logging.ERROR:
        # a busy default dashboard port is routine (the address in use is logged)
        warnings.filterwarnings(
            "ignore", message=r"Port \d+ is already in use", category=UserWarning
        )
    # distributed sets its loggers' levels when first imported, from this config
    import dask

    dask.config.set(
        {"logging": {name: logging.getLevelName(third_party).lower() for name in THIRD_PARTY}}
    )


def _set_worker_level(level: int) -> None:
    logging.getLogger("virnuc_dask").setLevel(level)


def forward_worker_logs(client, verbosity: str = "normal") -> None:
    """Send the workers' ``virnuc_dask`` records (warnings; with ``verbose``, info) here.

    The level is set on every worker, also on workers that join or restart later.
    """
    level = (
        logging.DEBUG
        if verbosity == "debug"
        else logging.INFO
        if verbosity == "verbose"
        else logging.WARNING
    )
    client.register_worker_callbacks(setup=functools.partial(_set_worker_level, level))
    client.forward_logging("virnuc_dask", level=level)
