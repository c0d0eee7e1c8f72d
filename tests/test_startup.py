"""Start-up: ``import sedeploy`` and ``sedeploy --help`` load no PyTorch, ONNX or inference engine, and a Ctrl-C
while the command line is still importing is one line and exit 130, not a traceback.

Each check runs a fresh interpreter (this test process has long imported everything).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import sedeploy

HEAVY = ("torch", "onnxruntime", "openvino", "onnx")
"""What start-up must not import: the training stack, the engines, and the ONNX protobuf package."""


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _imported(importtime_report: str) -> set[str]:
    """Top-level names of the modules in a ``-X importtime`` report (``import time: self | cumulative | name``)."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in importtime_report.splitlines()
        if line.startswith("import time:") and "|" in line
    }


_LOADED = (
    f"import json, sys; print('@@' + json.dumps([name for name in {list(HEAVY)!r} if name in sys.modules]))"
)


def _loaded(stdout: str) -> list[str]:
    return list(json.loads(next(line[2:] for line in stdout.splitlines() if line.startswith("@@"))))


def test_import_sedeploy_loads_no_torch_or_engine() -> None:
    result = _python("-X", "importtime", "-c", f"import sedeploy\n{_LOADED}")
    assert result.returncode == 0, result.stderr
    assert _loaded(result.stdout) == []
    assert _imported(result.stderr) & set(HEAVY) == set()
    assert "sedeploy" in _imported(result.stderr)  # the report was read


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["predict", "--help"]], ids=" ".join)
def test_the_command_line_starts_without_torch_or_engine(args: list[str]) -> None:
    program = (
        f"import sys; sys.argv = ['sedeploy', *{args!r}]\n"
        "from sedeploy.cli import main\n"
        f"try:\n    main()\nexcept SystemExit as done:\n    assert done.code in (0, None), done.code\n{_LOADED}"
    )
    result = _python("-c", program)
    assert result.returncode == 0, result.stderr
    assert _loaded(result.stdout) == []


def test_the_installed_entry_point_help_imports_no_torch() -> None:
    """``sedeploy --help`` as a user types it (the console script, else ``python -m sedeploy``)."""
    script = Path(sys.executable).with_name("sedeploy")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "sedeploy"]
    result = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: sedeploy" in result.stdout and "build-engine" in result.stdout
    imported = _imported(result.stderr)
    assert "click" in imported  # the report was read
    assert imported & set(HEAVY) == set()


def test_the_lazy_face_keeps_every_public_name() -> None:
    from sedeploy.models.registry import create_model
    from sedeploy.optimize import optimize
    from sedeploy.runtime import load

    assert set(sedeploy.__all__) <= set(dir(sedeploy))
    for name in sedeploy.__all__:
        assert getattr(sedeploy, name) is not None, name
    assert sedeploy.create_model is create_model and sedeploy.load is load
    # the function keeps its name although the submodule sedeploy.optimize is imported (and bound) by others
    module = sys.modules["sedeploy.optimize"]
    assert isinstance(module, types.ModuleType)
    assert sedeploy.optimize is optimize
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = sedeploy.nothing_here  # type: ignore[attr-defined]


_INTERRUPT_WHILE_IMPORTING = """
import sys
from sedeploy.cli.interrupts import Terminated

class InterruptImport:  # the signal arrives while main() imports the command line
    def find_spec(self, name, path=None, target=None):
        if name == "sedeploy.cli.app":
            raise {error}()
        return None

sys.meta_path.insert(0, InterruptImport())
sys.argv = ["sedeploy", "info", "se_resnet18"]
from sedeploy.cli import main
main()
"""


@pytest.mark.parametrize(
    ("error", "code", "name"), [("KeyboardInterrupt", 130, "SIGINT"), ("Terminated", 143, "SIGTERM")]
)
def test_an_interrupt_while_the_command_line_imports_is_one_line(error: str, code: int, name: str) -> None:
    result = _python("-c", _INTERRUPT_WHILE_IMPORTING.format(error=error))
    assert result.returncode == code, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: interrupted by {name}; no partial artifact or temporary file was left, run the command again to finish"
    ]


def _restore_sigint() -> None:
    # A job started in the background of a non-interactive shell inherits SIGINT ignored (see test_interrupt.py).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc to see PyTorch being loaded")
def test_ctrl_c_while_a_command_imports_pytorch_is_one_line() -> None:
    """Ctrl-C in the first seconds of ``sedeploy info``, while it imports PyTorch: exit 130, one line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sedeploy", "info", "se_resnet50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_restore_sigint,
    )
    try:
        maps = Path(f"/proc/{process.pid}/maps")
        deadline = time.monotonic() + 120
        while "libtorch" not in maps.read_text(errors="replace"):
            assert process.poll() is None, f"finished before PyTorch was loaded:\n{process.stderr.read()}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "PyTorch was not loaded within 120 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "error: interrupted by SIGINT; no partial artifact or temporary file was left, run the command again to finish"
    ]
