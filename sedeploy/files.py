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
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from sedeploy.errors import BadInputError, ConfigError

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


def sha256_of_file(path: str | os.PathLike[str], what: str = "file", max_bytes: int | None = None) -> str:
    """Hex SHA-256 of a regular file's bytes, read in chunks (:func:`open_regular`: a pipe or device is refused)."""
    with open_regular(path, what, max_bytes) as handle:
        return sha256_of_handle(handle)


def sha256_of_handle(handle: BinaryIO) -> str:
    """Hex SHA-256 of an open file's bytes from its start, read in chunks; the position is left at the end."""
    digest = hashlib.sha256()
    handle.seek(0)
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


# Reading what the user names: regular files only, never a blocking open.

MAX_JSON_BYTES: int = 64 << 20
"""The most bytes a JSON or text file sedeploy reads whole may hold (manifests, training records, calibration
caches, labels): their format bounds nothing, and a stray multi-gigabyte file must not be read into memory."""
MAX_ONNX_BYTES: int = 2 << 30
"""The most bytes an ONNX file can hold: protobuf's 2 GiB limit (larger weights live in external data)."""

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFileError(BadInputError):
    """A path names something that is not a regular file (a pipe, a socket, a device, or a link to one).

    ``reason`` says what it is, without the path (it goes into skip lists and image reports).
    """

    def __init__(self, what: str, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{what} {path} is {reason}, not a regular file; give a regular file")
        self.path = str(path)
        self.reason = f"{reason}, not a regular file"


class FileTooLargeError(BadInputError):
    """A file is larger than anything of its kind can be; refused before it is read."""

    def __init__(self, what: str, path: str | os.PathLike[str], size: int, limit: int) -> None:
        super().__init__(
            f"{what} {path} is {size} bytes, more than the {limit} a {what} can hold; give the right file"
        )
        self.path = str(path)
        self.reason = f"{size} bytes, more than the {limit} allowed"


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def special_file_reason(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists but is not a regular file (links followed), else None.

    Reading a named pipe blocks until a writer comes, a device such as
    ``/dev/zero`` never ends, and a socket cannot be opened at all: each is named
    here (``"a named pipe"``, ``"a link to /dev/zero, a character device"``,
    ``"a broken link to x.png"``) so folder walks can skip it and direct names can be
    refused. A path that does not exist, or cannot be looked at, gives None: its
    reader reports that in its own words. Nothing is opened.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a broken link to {os.readlink(path)}"
        return None
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    kind = _kind(mode)
    if os.path.islink(path):
        return f"a link to {os.path.realpath(path)}, {kind}"
    return kind


def open_regular(path: str | os.PathLike[str], what: str = "file", max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for reading in binary mode, if it is a regular file (links followed), without ever blocking.

    The one gate for every file a user names (images, ONNX, weights, records,
    manifests, caches). A pipe, socket or device, or a link to one, is refused
    with :class:`NotRegularFileError` before it is opened; the file is then opened
    non-blocking and checked again on the open descriptor, so a path swapped for a
    pipe in between is refused too, not waited on. ``max_bytes`` refuses a larger
    file (:class:`FileTooLargeError`). A path that does not exist or cannot be read
    raises the usual :class:`OSError`, for the caller to word.
    """
    reason = special_file_reason(path)
    if reason is not None:
        raise NotRegularFileError(what, path, reason)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):  # swapped after the look above
            raise NotRegularFileError(what, path, _kind(status.st_mode))
        if max_bytes is not None and status.st_size > max_bytes:
            raise FileTooLargeError(what, path, status.st_size, max_bytes)
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular_bytes(
    path: str | os.PathLike[str], what: str = "file", max_bytes: int = MAX_JSON_BYTES
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (:func:`open_regular`; one that grows past it too)."""
    with open_regular(path, what, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(what, path, len(data), max_bytes)
    return data


def read_regular_text(
    path: str | os.PathLike[str], what: str = "file", max_bytes: int = MAX_JSON_BYTES
) -> str:
    """:func:`read_regular_bytes` decoded as UTF-8 (a :class:`UnicodeDecodeError` is the caller's to word)."""
    return read_regular_bytes(path, what, max_bytes).decode("utf-8")


def proc_fd_path(handle: BinaryIO, path: str | os.PathLike[str]) -> str:
    """A name that opens the very file ``handle`` has open (``/proc/self/fd/N``), for readers that take only a name.

    Where there is no ``/proc`` (not Linux) it is ``path`` itself, checked but open to a swap in between.
    """
    candidate = f"/proc/self/fd/{handle.fileno()}"
    return candidate if os.path.exists(candidate) else str(path)


# Outputs never overwrite inputs.


def _same_file(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: the same inode (hard links, links, ``./``), or the same resolved path."""
    try:
        one, other = os.stat(first), os.stat(second)
        if (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino):
            return True
    except (OSError, ValueError):
        pass
    return os.path.realpath(first) == os.path.realpath(second)


def refuse_output_over_input(
    outputs: Sequence[tuple[str, str | os.PathLike[str] | None]],
    inputs: Sequence[tuple[str, str | os.PathLike[str] | None]] = (),
) -> None:
    """Refuse, before any work, an output that is one of the command's inputs, or two outputs that are one file.

    ``outputs`` are (parameter name, path) pairs (``("output", "m.onnx")``), ``inputs``
    (description, path) pairs (``("the source model", "m.onnx")``); None paths are
    left out. Paths are compared as files, not strings: through links, ``./``, ``..``
    and hard links. Raises :class:`~sedeploy.errors.ConfigError` (the request is wrong)
    whose one line names both paths; the parameter names are in ``params`` so the
    CLI shows its flags.
    """
    named_outputs = [(name, path) for name, path in outputs if path is not None]
    named_inputs = [(name, path) for name, path in inputs if path is not None]
    params = tuple(name for name, _ in named_outputs if name.isidentifier())
    for index, (name, path) in enumerate(named_outputs):
        for description, source in named_inputs:
            if _same_file(path, source):
                raise ConfigError(
                    f"{name} {path} is {description} {source} (the same file), which the run would overwrite; "
                    f"give {name} another path",
                    params=params,
                )
        for other_name, other in named_outputs[index + 1 :]:
            if _same_file(path, other):
                raise ConfigError(
                    f"{name} {path} and {other_name} {other} are the same file; give each its own path",
                    params=params,
                )
