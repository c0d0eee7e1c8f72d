"""The processes behind ``sedeploy serve``: Triton in a session of its own, and none of its processes left.

PyTriton 0.7 starts ``tritonserver`` (through the ``sh`` package, without a new
session) in sedeploy's own process group, and Triton's Python backend stubs are
its children. A terminal's Ctrl-C goes to the whole foreground process group, so
Triton and its stubs would get SIGINT at the same moment as sedeploy and stop
before sedeploy could unload the models: :func:`start_in_own_session` makes
PyTriton start ``tritonserver`` through ``setsid``, so only sedeploy hears a
Ctrl-C and orders the shutdown itself.

Every process Triton starts is reaped before the server's ``stop`` returns: while
Triton runs, this process is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``),
so a stub that outlives ``tritonserver`` becomes this process's child instead of a
zombie left for its parent's parent, and :meth:`TritonProcesses.reap` waits for it.
Processes are read from ``/proc`` with their start time, so a reused pid is never
signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ORPHAN_GRACE_S = 1.0
"""After Triton has exited, how long its Python backend stubs get to exit on their own before they are killed."""
REAP_TIMEOUT_S = 5.0
"""How long stopping waits for Triton's processes, once signalled or killed, to be reaped."""
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


def proc_stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a process from ``/proc``; None when it is gone (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], fields[19]


def process_tree(root: int) -> dict[int, str]:
    """``root`` and every process below it, by pid, with its start time (to never signal a reused pid)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    tree: dict[int, str] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        stat = proc_stat(pid)
        if stat is not None and pid not in tree:
            tree[pid] = stat[2]
            pending.extend(children.get(pid, []))
    return tree


def running(processes: dict[int, str]) -> list[int]:
    """The pids of ``processes`` still running (not exited, not a zombie, not a reused pid)."""
    alive = []
    for pid, started in processes.items():
        stat = proc_stat(pid)
        if stat is not None and stat[2] == started and stat[1] != "Z":
            alive.append(pid)
    return alive


def _stub_folders(processes: dict[int, str]) -> list[Path]:
    """The temporary model folders (``<tmp>/folderXXXX/1/model.py``) Triton's Python backend made for its stubs.

    Triton removes them when a stub exits cleanly; a stub killed at shutdown would leave them behind.
    """
    temp = Path(tempfile.gettempdir()).resolve()
    folders = []
    for pid in processes:
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for argument in arguments:
            path = Path(os.fsdecode(argument))
            if path.name == "model.py" and len(path.parts) > 3:
                folder = path.parent.parent
                if folder.parent.resolve() == temp and folder.name.startswith("folder"):
                    folders.append(folder)
    return folders


def _kill_left(processes: dict[int, str], timeout_s: float) -> None:
    """Wait for Triton's processes to exit; kill those still running after ``timeout_s``.

    The Python backend stubs are Triton's children; when Triton has to give up on
    them at exit they would otherwise linger, orphaned, until they notice.
    """
    deadline = time.monotonic() + timeout_s
    while running(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in running(processes):
        logger.warning("Triton's process %d did not exit; killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_for(processes: dict[int, str], server_pid: int | None, timeout_s: float) -> None:
    """Reap Triton's processes that are this process's children now, so none is left a zombie.

    Only the pids of Triton's tree are waited for (never another child of this
    process, whose owner waits for it). ``tritonserver`` itself is PyTriton's
    child process object's to reap (its watcher thread polls it); it is reaped
    here only if that has not happened by the deadline.
    """
    deadline = time.monotonic() + timeout_s
    pending = dict(processes)
    while pending:
        for pid, started in list(pending.items()):
            stat = proc_stat(pid)
            if stat is None or stat[2] != started:
                del pending[pid]  # gone (reaped by whoever is its parent), or the pid was reused
            elif stat[0] != os.getpid():
                if stat[1] == "Z" or time.monotonic() > deadline:
                    del pending[pid]  # another process's zombie (no subreaper here): not ours to reap
            elif pid != server_pid or time.monotonic() > deadline:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        del pending[pid]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in pending:
        logger.warning("Triton's process %d was not reaped within %.0f s", pid, timeout_s)


def tritonserver_pid(triton: Any) -> int | None:
    """The ``tritonserver`` process id (PyTriton keeps it on a private attribute; None if that changes)."""
    command = getattr(getattr(triton, "_triton_server", None), "_tritonserver_running_cmd", None)
    pid = getattr(command, "pid", None)
    return pid if isinstance(pid, int) else None


class TritonProcesses:
    """``tritonserver`` and every process below it as they are now, to wait for, reap and clean up after."""

    def __init__(self, triton: Any) -> None:
        self.server_pid = tritonserver_pid(triton)
        self.tree = process_tree(self.server_pid) if self.server_pid is not None else {}
        self._folders = _stub_folders(self.tree)

    @property
    def stubs(self) -> dict[int, str]:
        """The processes below ``tritonserver`` (its Python backend stubs and theirs)."""
        return {pid: started for pid, started in self.tree.items() if pid != self.server_pid}

    def reap(self) -> None:
        """Once Triton was told to stop: kill what is still running after a grace period, reap what became this
        process's child, and remove the model folders of stubs that did not exit cleanly."""
        _kill_left(self.tree, ORPHAN_GRACE_S)
        _wait_for(self.tree, self.server_pid, REAP_TIMEOUT_S)
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)


def start_in_own_session(triton: Any) -> bool:
    """Make PyTriton start ``tritonserver`` through ``setsid``: a session and process group of its own.

    ``setsid`` execs in place (its caller, a fresh child, never leads a group), so the pid PyTriton watches,
    signals and reaps is still ``tritonserver``'s, and PyTriton's parent-death signal still holds. PyTriton
    0.7 builds its server object lazily and splits the command it runs at its first space; both are
    private, so where they differ (or there is no ``setsid``) Triton starts as before, with a warning.
    Returns whether Triton will run in its own session.
    """
    setsid = shutil.which("setsid")
    if setsid is None or " " in setsid:
        logger.warning(
            "no setsid command here: a Ctrl-C to the terminal also stops Triton before sedeploy does"
        )
        return False
    try:
        if triton._triton_server is None:
            triton._initialize_server()
        server = triton._triton_server
        command = Path(server._server_path).as_posix()
    except AttributeError:
        logger.warning(
            "this nvidia-pytriton starts Triton in a way sedeploy does not know: a Ctrl-C to the terminal "
            "also stops Triton before sedeploy does"
        )
        return False
    if not command.startswith(f"{setsid} "):
        server._server_path = Path(f"{setsid} {command}")
    return True


def _prctl() -> Any:
    """libc's ``prctl``, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def become_subreaper() -> int | None:
    """Make this process a child subreaper (orphaned descendants become its children); returns the old setting.

    None where it cannot be done (not Linux): stubs orphaned there go to init as before.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    before = ctypes.c_int(0)
    if prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0) != 0:
        return None
    if prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return None
    return before.value


def restore_subreaper(before: int | None) -> None:
    """Put back the setting :func:`become_subreaper` returned (nothing to do for None)."""
    prctl = _prctl()
    if prctl is not None and before is not None:
        prctl(_PR_SET_CHILD_SUBREAPER, before, 0, 0, 0)
