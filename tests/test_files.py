"""Atomic writes keep the usual permissions, whatever the writer inside the block does to the temp file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sedeploy import create_model
from sedeploy.files import atomic_output
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
# Ctrl-C can land after a temporary file is made and before the code that removes it. These tests put a
# real SIGINT exactly there, in a fresh interpreter (signal_scenarios.py says why not in this one).


def _temps(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What each scenario of ``signal_scenarios.py`` left behind, run once in a subprocess."""
    root = tmp_path_factory.mktemp("signals")
    script = Path(__file__).with_name("signal_scenarios.py")
    result = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    outcomes: dict[str, Any] = json.loads(result.stdout)
    return outcomes


def test_a_signal_inside_a_deferred_block_is_raised_when_the_block_ends(interrupted: dict[str, Any]) -> None:
    outcome = interrupted["deferred"]
    assert outcome["raised"] == "KeyboardInterrupt"
    assert outcome["steps"] == ["after the signal"]  # the block finished; what follows it did not run
    assert outcome["handler_restored"]


def test_check_writable_interrupted_mid_way_leaves_no_temporary_file(interrupted: dict[str, Any]) -> None:
    assert interrupted["check_writable"] == {"raised": "KeyboardInterrupt", "temps": []}


def test_atomic_output_interrupted_as_its_file_is_made_leaves_nothing(interrupted: dict[str, Any]) -> None:
    assert interrupted["atomic_output"] == {"raised": "KeyboardInterrupt", "temps": [], "target": "earlier\n"}


def test_commit_files_finishes_every_rename_before_the_interruption(interrupted: dict[str, Any]) -> None:
    assert interrupted["commit"] == {"raised": "KeyboardInterrupt", "temps": [], "contents": ["new", "new"]}


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
