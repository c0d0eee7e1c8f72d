"""``sedeploy serve`` stopped by a signal, as its own process: models unloaded first, requests answered, nothing left.

A terminal's Ctrl-C is SIGINT to the whole foreground process group; a service
manager sends SIGTERM to sedeploy alone. Either way sedeploy must unload the models
while Triton still runs (new requests are refused, running ones finish), then stop
Triton and reap every process it started. The test process makes itself a child
subreaper, so anything ``sedeploy serve`` leaves behind (an orphaned Triton Python
backend stub) is re-parented to it rather than to init, where it can be seen: as a
zombie if it exited unreaped, or still running.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tiny_models import export_tiny

from sedeploy.serving.processes import proc_stat, process_tree
from sedeploy.serving.server import free_port

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
httpclient = pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")

_PR_SET_CHILD_SUBREAPER = 36
MODEL = "se_preact_resnet"  # the tiny model's default Triton name (its architecture)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("signals") / "model.onnx")


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
        stat = proc_stat(pid)
        if stat is not None and stat[2] == started:
            left[pid] = stat[1]
    return left


def _clean_up(tree: dict[int, str]) -> None:
    """Kill and reap what came to this process, so a failing test leaves no process or zombie either."""
    for pid, started in tree.items():
        stat = proc_stat(pid)
        if stat is None or stat[2] != started:
            continue
        if stat[1] != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if stat[0] == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


@dataclass
class Serving:
    """A ``sedeploy serve`` process in its own session (as a shell runs a foreground job), ready."""

    process: subprocess.Popen[str]
    http_port: int
    stderr: Path
    tree: dict[int, str] = field(default_factory=dict)
    """Every process below sedeploy once ready: tritonserver and its Python backend stubs."""

    def client(self, timeout_s: float = 60) -> Any:
        return httpclient.InferenceServerClient(f"127.0.0.1:{self.http_port}", network_timeout=timeout_s)

    def triton_pids(self) -> list[int]:
        """sedeploy's own children: tritonserver."""
        return [pid for pid in self.tree if (proc_stat(pid) or (0,))[0] == self.process.pid]

    def exit(self) -> tuple[int, str]:
        """The exit code and stderr once it exits."""
        code = self.process.wait(timeout=60)
        return code, self.stderr.read_text()


def _ready(process: subprocess.Popen[str]) -> bool:
    seen = threading.Event()

    def watch() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("ready:"):
                seen.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    return seen.wait(120)


@contextlib.contextmanager
def _serving(model: Path, stderr: Path, instances: int = 1) -> Iterator[Serving]:
    ports = [free_port() for _ in range(3)]
    command = [sys.executable, "-m", "sedeploy", "serve", str(model), "--instances", str(instances)]
    command += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    with _subreaper(), stderr.open("w") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )
        serving = Serving(process, ports[0], stderr)
        try:
            assert _ready(process), f"no ready line within 120 s: {stderr.read_text()[-2000:]}"
            serving.tree = {
                pid: start for pid, start in process_tree(process.pid).items() if pid != process.pid
            }
            assert len(serving.tree) >= 2, serving.tree  # tritonserver and its Python backend stubs
            yield serving
            time.sleep(0.5)  # anything orphaned at the very end reaches this subreaper
            left = _left(serving.tree)
            assert left == {}, f"left behind: {left} (Z: a zombie)"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            _clean_up(serving.tree)


def _large_jpeg(side: int) -> bytes:
    """A plain grey JPEG of side x side pixels: a small upload that takes the server about a second to decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _tensor_request(client: Any) -> str:
    """One request to the tensor endpoint: ``ok``, ``unloaded`` (Triton up, the model gone) or the error."""
    tensor = httpclient.InferInput("input", [1, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    try:
        client.infer(MODEL, [tensor])
    except Exception as error:
        text = str(error)
        return "unloaded" if "unknown model" in text or "no available versions" in text else text
    return "ok"


def test_ctrl_c_unloads_the_models_first_and_answers_the_request_in_flight(
    model: Path, tmp_path: Path
) -> None:
    slow = _large_jpeg(5000)
    with _serving(model, tmp_path / "stderr.txt") as serving:
        triton = serving.triton_pids()
        assert triton and all(os.getpgid(pid) != serving.process.pid for pid in triton), (
            "Triton shares the Ctrl-C"
        )
        assert _tensor_request(serving.client()) == "ok"

        answer: dict[str, Any] = {}

        def in_flight() -> None:
            images = httpclient.InferInput("image", [2], "BYTES")
            images.set_data_from_numpy(np.array([slow] * 2, dtype=np.object_))
            try:
                answer["labels"] = serving.client().infer(f"{MODEL}_images", [images]).as_numpy("labels")
            except Exception as error:
                answer["error"] = str(error)
            answer["at"] = time.monotonic()

        request = threading.Thread(target=in_flight)
        request.start()
        time.sleep(0.15)  # sent; decoding two 25-megapixel images takes the server a second or more
        os.killpg(serving.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        seen = []
        poller = serving.client(timeout_s=5)
        while serving.process.poll() is None and "unloaded" not in seen and len(seen) < 200:
            seen.append(_tensor_request(poller))
            time.sleep(0.02)
        unloaded_at = time.monotonic()
        request.join(60)
        code, stderr = serving.exit()
    # Triton answered that the model was gone while it still ran: the models were unloaded before it stopped,
    # and the request in flight then was answered in full.
    assert "unloaded" in seen, seen
    assert answer.get("error") is None and answer["labels"].shape == (2, 3), answer
    assert answer["at"] > unloaded_at, "the request was answered before the models were unloaded"
    assert code in (0, 130), stderr
    assert "stopped (SIGINT)" in stderr
    for symptom in ("could not unload", "exited with failure", "Traceback"):
        assert symptom not in stderr, stderr


def test_sigterm_under_load_stops_everything(model: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    answered = [0]
    with _serving(model, tmp_path / "stderr.txt", instances=2) as serving:

        def load() -> None:
            client = serving.client(timeout_s=10)
            while not stop.is_set():
                if _tensor_request(client) == "ok":
                    answered[0] += 1
                else:
                    time.sleep(0.05)

        workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 30
        while answered[0] < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answered[0] >= 20
        start = time.monotonic()
        try:
            serving.process.send_signal(signal.SIGTERM)  # to sedeploy alone, as a service manager does
            code, stderr = serving.exit()
        finally:
            stop.set()
        elapsed = time.monotonic() - start
    assert code == 0, stderr
    assert elapsed < 15
    assert "stopped (SIGTERM)" in stderr
    assert "could not unload" not in stderr and "Traceback" not in stderr, stderr
