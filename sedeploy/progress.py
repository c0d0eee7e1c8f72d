"""Progress that shows where time goes, in a terminal and in a log.

On a terminal a step is a tqdm bar. When standard error is not a terminal (a CI log, a service's journal),
a bar becomes plain lines: one when the step starts, one every :data:`HEARTBEAT_S` seconds while it runs,
one when it ends, so a log says what ran and for how long. The lines are INFO records of the
``sedeploy.progress`` logger (the CLI shows them on standard error unless ``--quiet``); ``enabled=False``
shows nothing. Like tqdm, nothing here writes to standard output.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from tqdm import tqdm

logger = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
"""Seconds between two lines of a step that is still running, without a terminal."""


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LineProgress:
    """The part of tqdm's interface sedeploy uses, as lines: start, heartbeat, end."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self._iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n = 0
        self.desc = desc
        self._unit = unit
        self._heartbeat = heartbeat_s
        self._started = self._last = time.monotonic()
        self._closed = False
        self._postfix = ""
        self._line(f"{self.desc}: started" + (f" ({self.total} {self._unit})" if self.total else ""))

    def _line(self, text: str) -> None:
        logger.info("%s", text)

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self._unit}" if self.total else f"{self.n} {self._unit}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self._heartbeat:
            self._last = now
            postfix = f", {self._postfix}" if self._postfix else ""
            self._line(f"{self.desc}: {self._count()}, {now - self._started:.0f} s{postfix}")

    def set_description(self, desc: str, refresh: bool = True) -> None:
        if desc != self.desc:
            self.desc = desc
            self._last = time.monotonic()
            self._line(f"{desc} ...")

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self._postfix = text

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self._postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line(f"{self.desc}: done, {self._count()} in {time.monotonic() - self._started:.1f} s")

    def __iter__(self) -> Iterator[Any]:
        assert self._iterable is not None
        try:
            for item in self._iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent:
    """A bar that shows nothing (``enabled=False``), with the same interface."""

    def __init__(self, iterable: Iterable[Any] | None = None, **_: Any) -> None:
        self._iterable = iterable
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str, refresh: bool = True) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        assert self._iterable is not None
        yield from self._iterable

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
    stream: IO[str] | None = None,
) -> Any:
    """A tqdm bar on a terminal, :class:`LineProgress` lines elsewhere, nothing when not ``enabled``."""
    stream = stream or sys.stderr
    if not enabled:
        return _Silent(iterable)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit)


@contextmanager
def stage(name: str, enabled: bool = True, stream: IO[str] | None = None) -> Iterator[None]:
    """A step with no count of its own (an export, a graph optimization): lines without a terminal.

    Prints ``name ...`` when it starts, ``name: still running (N s)`` every :data:`HEARTBEAT_S` seconds, and
    ``name: done in N s`` at the end; on a terminal (where bars show progress) and when not ``enabled``,
    nothing. ``stream`` is only asked whether it is a terminal.
    """
    stream = stream or sys.stderr
    if not enabled or _is_terminal(stream):
        yield
        return
    started = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            logger.info("%s: still running (%.0f s)", name, time.monotonic() - started)

    logger.info("%s ...", name)
    thread = threading.Thread(target=beat, name=f"sedeploy-heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    logger.info("%s: done in %.1f s", name, time.monotonic() - started)
