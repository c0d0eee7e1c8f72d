"""Ctrl-C and SIGTERM on the command line: one line and exit 130 / 143, never a traceback (without ``-v``).

Standard library only, so that :func:`sedeploy.cli.main` can rely on it before anything heavy is imported.
"""

from __future__ import annotations

import signal
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and cleanup handler runs before the process exits."""


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """First SIGTERM: unwind cleanly (exit code 143). A second one, during that cleanup, ends the process at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def interruption(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    """The one line to print for ``interrupt`` and the exit code (130 for SIGINT, 143 for SIGTERM).

    Cleanup (temporary files, staged artifacts) ran while the interrupt propagated; a file made just before the
    signal, ahead of the code that would remove it, is removed here, so the line's promise holds.
    """
    from sedeploy.files import remove_unfinished_temps

    remove_unfinished_temps()
    name = "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT"
    line = (
        f"error: interrupted by {name}; no partial artifact or temporary file was left, "
        "run the command again to finish"
    )
    return line, 143 if name == "SIGTERM" else 130
