"""``sedeploy serve`` reaps every process it starts: none is left running or a zombie after SIGINT or SIGTERM.

The test process makes itself a child subreaper, so anything ``sedeploy serve``
leaves behind (an orphaned Triton Python backend stub) is re-parented to it
rather than to init, where it can be seen: as a zombie if it exited unreaped, or
still running. A terminal's Ctrl-C reaches the whole process group at once, which
is how a stub can outlive ``tritonserver``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_models import export_tiny

from sedeploy.serving.server import _process_tree, _stat, free_port

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")

_PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("reaping") / "model.onnx")


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    assert prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _left(tree: dict[int, str]) -> dict[int, str]:
    """The processes of ``tree`` that still exist (same pid and start time), with their state."""
    left = {}
    for pid, started in tree.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started:
            left[pid] = stat[1]
    return left


def _clean_up(tree: dict[int, str]) -> None:
    """Kill and reap what came to this process, so a failing test leaves no process or zombie either."""
    for pid, started in tree.items():
        stat = _stat(pid)
        if stat is None or stat[2] != started:
            continue
        if stat[1] != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if stat[0] == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _ready(process: subprocess.Popen[str]) -> bool:
    seen = threading.Event()

    def watch() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("ready:"):
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    return seen.wait(120)


@pytest.mark.parametrize(
    "how", ["SIGINT to the process group", "SIGTERM to the process"], ids=["ctrl-c", "sigterm"]
)
def test_serve_leaves_no_process_and_no_zombie(model: Path, how: str) -> None:
    ports = [str(free_port()) for _ in range(3)]
    command = [sys.executable, "-m", "sedeploy", "serve", str(model), "--instances", "2"]
    command += ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    with _subreaper():
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
        tree: dict[int, str] = {}
        try:
            assert _ready(process), "sedeploy serve did not print its ready line within 120 s"
            tree = {pid: started for pid, started in _process_tree(process.pid).items() if pid != process.pid}
            assert len(tree) >= 2, tree  # tritonserver and its Python backend stubs
            if how.startswith("SIGINT"):
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) in (0, 130, 143)
            time.sleep(0.5)  # anything orphaned at the very end reaches this subreaper
            left = _left(tree)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            _clean_up(tree)
    assert left == {}, f"left behind after {how}: {left} (Z: a zombie)"
