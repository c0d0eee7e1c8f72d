"""Artifact files: atomic writes and content hashes, shared by every stage that writes or checks a file.

An artifact is written to a temporary file beside its destination and renamed
over it only once complete (``os.replace`` is atomic within one file system), so
a failed or interrupted run leaves the previous file intact and no temp file.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sedeploy.errors import BadInputError

_OUT_OF_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
"""Write errors that say the place is full or read-only, not that sedeploy is wrong: one line, a fix."""


_INTERRUPTIONS = (signal.SIGINT, signal.SIGTERM)

_UNFINISHED: dict[Path, int] = {}
"""Every temporary file :func:`temp_path_beside` made, with the creating process: removed on interruption."""
_UNFINISHED_LOCK = threading.Lock()


@contextmanager
def interruptions_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs, then deliver them: for steps that must not be cut in two.

    Python runs signal handlers between any two bytecodes of the main thread, so
    "create a temporary file" and "remember to remove it" can be separated by a
    Ctrl-C. Inside this block a signal is only noted; it is raised (through the
    handler that was in place) once the block has finished. Off the main thread
    no handler can interrupt, and the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in _INTERRUPTIONS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for held in dict.fromkeys(pending):
            handler = previous[signal.Signals(held)]
            if callable(handler):
                handler(held, None)
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), held)


def temp_path_beside(path: Path) -> Path:
    """Create the destination folder and an empty, uniquely named temporary file in it.

    The temporary file is in the same folder so that ``os.replace`` onto ``path`` is
    an atomic rename; it is created with the usual permissions (0666 less the
    umask), which the final file keeps. An unwritable folder fails here, before
    any work is done. The file is registered, with no gap a signal could fall in,
    for :func:`remove_unfinished_temps`: an interruption anywhere before the caller's
    own cleanup is reached still leaves no temporary file.
    """
    if path.is_dir():
        raise BadInputError(f"output {path} is a folder; give a file path such as {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            temp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
            try:
                with interruptions_deferred():
                    os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                    _remember(temp)
                return temp
            except FileExistsError:
                continue
            except BaseException:  # an interruption delivered as the deferral ended
                temp.unlink(missing_ok=True)
                raise
    except OSError as error:
        raise BadInputError(
            f"cannot write to folder {path.parent} ({error.strerror or error}); choose a writable output path"
        ) from None


def _remember(temp: Path) -> None:
    with _UNFINISHED_LOCK:  # builds on several threads share the registry
        if len(_UNFINISHED) > 64:  # forget the ones already renamed or removed
            for known in [known for known in _UNFINISHED if not os.path.lexists(known)]:
                del _UNFINISHED[known]
        _UNFINISHED[temp] = os.getpid()


def remove_unfinished_temps() -> list[Path]:
    """Remove every temporary file this process made that still exists; returns them.

    The CLI calls it when a run is interrupted, and it runs at interpreter exit: a
    signal that lands between a file's creation and the ``try`` that would remove
    it cannot leave it behind. Files made by a parent process (before a fork) are
    not touched.
    """
    removed = []
    with _UNFINISHED_LOCK:
        entries = list(_UNFINISHED.items())
    for temp, pid in entries:
        if pid == os.getpid() and os.path.lexists(temp):
            temp.unlink(missing_ok=True)
            removed.append(temp)
        _UNFINISHED.pop(temp, None)
    return removed


atexit.register(remove_unfinished_temps)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail now, with :class:`BadInputError`, if ``path`` could not be written later (before long work starts)."""
    with interruptions_deferred():
        temp_path_beside(Path(path)).unlink()


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block ends without error.

    Any exception, ``KeyboardInterrupt`` and ``SystemExit`` included (the CLI turns
    SIGTERM into one), removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    temp_path = temp_path_beside(path)
    try:
        usual_mode = temp_path.stat().st_mode & 0o777  # 0666 less the umask
        yield temp_path
        if temp_path.stat().st_mode & 0o777 != usual_mode:  # a writer that recreated it (safetensors: 0600)
            temp_path.chmod(usual_mode)
        os.replace(temp_path, path)
    except OSError as error:
        if error.errno in _OUT_OF_ROOM:
            raise BadInputError(
                f"cannot write {path} ({error.strerror or error}); free disk space there or choose another output path"
            ) from None
        raise
    finally:
        temp_path.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``folder`` itself while the block runs.

    Locking the folder's own descriptor needs no lock file, so nothing is left
    behind; the lock goes with the descriptor, also when the process dies. On a
    system without ``fcntl`` the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def commit_files(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename each staged file onto its destination as one unit: under the destination folders' locks.

    Two writers committing to the same paths (an artifact and its manifest) each
    publish their whole set, one after the other, so the result is one writer's
    complete set, never a mix. An interruption (SIGINT, or SIGTERM through the CLI)
    is held until every rename is done (:func:`interruptions_deferred`).
    """
    folders = sorted({str(Path(destination).parent.resolve()) for _, destination in moves})
    with ExitStack() as locks:
        for folder in folders:
            locks.enter_context(folder_lock(folder))
        with interruptions_deferred():  # the renames are one unit: a signal waits until all are done
            for staged, destination in moves:
                os.replace(staged, destination)


TEST_DELAY_PREFIX = "SEDEPLOY_TEST_DELAY_"


def pause_for_tests(stage: str) -> None:
    """Sleep ``$SEDEPLOY_TEST_DELAY_<STAGE>`` seconds, if set: a test-only hook that holds a stage open.

    The interruption tests use it to signal a run while its temporary files
    exist (stages: ``CALIBRATE`` before calibration, ``PUBLISH`` before a build's
    staged files are renamed into place, ``BEST`` before ``optimize`` publishes its
    winner). Unset, it costs one environment lookup.
    """
    seconds = os.environ.get(TEST_DELAY_PREFIX + stage.upper())
    if seconds:
        time.sleep(float(seconds))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_output(path) as temp_path:
        temp_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def sha256_of_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
