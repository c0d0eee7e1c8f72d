"""The ``sedeploy`` command line: it parses arguments and calls the library, nothing more.

Layout (every module below 750 lines):

- ``interrupts.py``: Ctrl-C / SIGTERM -> one line, exit 130 / 143 (standard library only);
- ``app.py``: the ``cli`` group, global options, the error -> ``error: <one line>`` + exit code mapping
  (:func:`~sedeploy.cli.app.in_cli_words`), the list of commands;
- ``options.py``: options and parsers the commands share, and ``Later`` (library defaults read on use);
- ``model.py`` (info, export, train), ``build.py`` (build-engine, optimize), ``check.py`` (bench, verify,
  predict, inspect, demo), ``serving.py`` (triton, serve, loadtest): the commands.

A command imports its library module when it runs, so ``sedeploy --help`` imports no PyTorch, ONNX or
inference engine. This module holds only :func:`main`; ``cli``, ``in_cli_words`` and ``LIBRARY_NAMES`` are
loaded from ``app.py`` when first read, so the console script's ``from sedeploy.cli import main`` is quick and
:func:`main` can catch a Ctrl-C that arrives while the rest is imported.
"""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING, Any

from sedeploy.cli.interrupts import Terminated, interruption, on_sigterm

if TYPE_CHECKING:
    from sedeploy.cli.app import LIBRARY_NAMES, cli, in_cli_words

__all__ = ["LIBRARY_NAMES", "Terminated", "cli", "in_cli_words", "main"]

_FROM_APP = frozenset({"LIBRARY_NAMES", "cli", "in_cli_words"})


if not TYPE_CHECKING:  # hidden from type checkers, which see the imports above

    def __getattr__(name: str) -> Any:
        """``cli``, ``in_cli_words``, ``LIBRARY_NAMES``: imported from ``app.py`` on first use."""
        if name not in _FROM_APP:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from sedeploy.cli import app

        value = getattr(app, name)
        globals()[name] = value
        return value


def main() -> None:
    """Console-script entry point (``sedeploy``, ``python -m sedeploy``).

    SIGTERM ends a run as cleanly as Ctrl-C (no temporary files, old artifacts intact). Both are handled from
    the first line on: an interrupt while the command line is still importing is one line and exit 130
    (143 for SIGTERM), like one during a command.
    """
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        from sedeploy.cli.app import cli
    except KeyboardInterrupt as interrupt:
        line, code = interruption(interrupt)
        print(line, file=sys.stderr)
        sys.exit(code)
    cli(prog_name="sedeploy")
