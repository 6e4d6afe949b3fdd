"""Command line: ``virnuc-dask COMMAND``, one module of this package per command.

``main(argv) -> int`` does the work and returns the exit code (0 complete,
2 partial: some records failed and are listed, 1 failed); ``console_main`` is
the console entry point. Expected failures (:class:`~virnuc_dask.errors.VirnucError`
and ``OSError``) print one line on stderr; anything else is an internal error,
also one line, with a traceback only with ``--debug``.

Each command module has ``add_parser(subparsers)`` (its parser's
``set_defaults(run=...)`` names ``run(args) -> int``) and imports what it runs only
inside ``run``, so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from virnuc_dask import __version__
from virnuc_dask.cli.options import verbosity
from virnuc_dask.errors import ClusterError, VirnucError, first_line

logger = logging.getLogger("virnuc_dask")

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2

COMMANDS: tuple[str, ...] = (
    "predict",
    "demo",
    "validate",
    "report",
    "models",
    "job_script",
    "bench",
    "doctor",
    "train",
    "evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virnuc-dask",
        description="Identify viral reads (VirNucPro: six-frame ORFs, DNABERT-S + ESM-2 "
        "embeddings, MLP classifier) on every GPU of a node or an HPC allocation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"virnuc_dask.cli.{name}").add_parser(sub)
    return parser


def setup_logging(args: argparse.Namespace) -> None:
    from virnuc_dask.cli.logs import configure

    configure(verbosity(args), args.log_file)


def error_message(exc: BaseException) -> str:
    """One line for an expected failure, whether raised here or on a worker."""
    if type(exc).__name__ == "KilledWorker":  # distributed: a task kept killing its workers
        return (
            "workers died repeatedly while running one task (out of host memory, or a "
            "crash in native code); see the worker logs, or try smaller --partition-rows"
        )
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, ClusterError):  # may end with the last lines of a job's log
        return str(exc).strip()
    return first_line(exc)


class Terminated(BaseException):
    """SIGTERM (a batch system ending the job, ``kill``): stop like Ctrl-C, exit 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        setup_logging(args)
    except OSError as exc:
        print(f"virnuc-dask: cannot write the log file: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return args.run(args)
    except (KeyboardInterrupt, Terminated) as exc:
        logger.error(
            "interrupted%s; finished partitions are kept, re-run the command to resume",
            " (SIGTERM)" if isinstance(exc, Terminated) else "",
        )
        return 143 if isinstance(exc, Terminated) else 130
    except (VirnucError, OSError) as exc:
        if args.debug:
            logger.exception("failed")
        else:
            logger.error("%s", error_message(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless --debug
        if args.debug:
            logger.exception("internal error")
        elif type(exc).__name__ == "KilledWorker":
            logger.error("%s", error_message(exc))
        else:
            logger.error(
                "internal error: %s: %s (re-run with --debug for a traceback)",
                type(exc).__name__,
                error_message(exc),
            )
        return EXIT_FAILED


def console_main() -> None:
    sys.exit(main())
