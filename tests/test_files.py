"""Atomic writes keep the usual permissions, whatever the writer inside the block does to the temp file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sedeploy import create_model, files
from sedeploy.files import atomic_output, check_writable, interruptions_deferred
from sedeploy.models.checkpoint import save_checkpoint


def _usual_mode(tmp_path: Path) -> int:
    probe = tmp_path / "probe"
    probe.write_text("x")
    return probe.stat().st_mode & 0o777


def test_a_writer_that_recreates_the_file_still_leaves_the_usual_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as temp:
        temp.unlink()
        fd = os.open(temp, os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors' writer does
        os.close(fd)
    assert target.stat().st_mode & 0o777 == _usual_mode(tmp_path)


def test_a_saved_checkpoint_is_readable_like_any_other_file(tmp_path: Path) -> None:
    model = create_model("se_resnet18", num_classes=3, img_size=32)
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    assert Path(path).stat().st_mode & 0o777 == _usual_mode(tmp_path)


# Interruptions: Python raises a signal's exception between any two bytecodes of the main thread, so a
# Ctrl-C can land after a temporary file is made and before the code that removes it. These tests put
# the signal exactly there: a real SIGINT sent to this process from inside the creating system call.


def _temps(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def _signal_on_close(monkeypatch, signum: int = signal.SIGINT) -> None:  # type: ignore[no-untyped-def]
    real_close = os.close

    def close_then_signal(descriptor: int) -> None:
        real_close(descriptor)
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(files.os, "close", close_then_signal)


def test_a_signal_inside_a_deferred_block_is_raised_when_the_block_ends() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interruptions_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("after the signal")
        steps.append("never")  # pragma: no cover - the block's end raised
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_check_writable_interrupted_mid_way_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _signal_on_close(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        check_writable(tmp_path / "model.onnx")
    assert _temps(tmp_path) == []


def test_atomic_output_interrupted_as_its_file_is_made_leaves_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "report.json"
    target.write_text("earlier\n")
    _signal_on_close(monkeypatch)
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as temp:
        temp.write_text("new\n")  # pragma: no cover - interrupted before the block
    assert _temps(tmp_path) == []
    assert target.read_text() == "earlier\n"


def test_a_temporary_file_orphaned_by_an_interruption_is_removed_at_exit(tmp_path: Path) -> None:
    """The caller made the file and was interrupted before its own ``try``: the process's exit removes it."""
    script = (
        "import sys; from pathlib import Path; from sedeploy.files import temp_path_beside\n"
        "temp = temp_path_beside(Path(sys.argv[1]) / 'model.int8.onnx')\n"
        "print(temp.name, flush=True)\n"
        "raise KeyboardInterrupt\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr
    assert result.stdout.strip().endswith(".tmp")  # it was made ...
    assert _temps(tmp_path) == []  # ... and is gone
