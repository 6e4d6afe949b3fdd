"""The command line's log handlers: the traceback distributed's ``sync()`` logs when
Ctrl-C lands before the awaited call started is dropped; every other error is kept."""

from __future__ import annotations

import logging
import sys

import pytest

from virnuc_dask.cli import logs


def exc_info_raised_in(filename: str, name: str) -> tuple:
    """The exc_info of a ``NameError`` raised by a function ``name`` defined in
    ``filename`` (as distributed's ``sync`` cancel callback raises it)."""
    namespace: dict = {}
    source = f"def {name}():\n    return never_set\n"
    exec(compile(source, filename, "exec"), namespace)
    try:
        namespace[name]()
    except NameError:
        return sys.exc_info()
    raise AssertionError("no NameError")


@pytest.fixture
def configured():
    logs.configure("normal")
    yield
    logs.configure("normal")


def test_the_interrupted_sync_traceback_is_dropped_other_errors_are_kept(
    configured, capsys, monkeypatch
):
    log = logging.getLogger("tornado.application")
    monkeypatch.setattr(log, "disabled", False)  # a logging config of the suite may disable it
    upstream = "/venv/lib/python3.11/site-packages/distributed/utils.py"
    log.error("Exception in callback cancel", exc_info=exc_info_raised_in(upstream, "cancel"))
    assert "never_set" not in capsys.readouterr().err
    log.error("Exception in callback other", exc_info=exc_info_raised_in(upstream, "other"))
    log.error("mine", exc_info=exc_info_raised_in("/somewhere/mine.py", "cancel"))
    text = capsys.readouterr().err
    assert "Exception in callback other" in text and "mine" in text
    assert text.count("Traceback") == 2
