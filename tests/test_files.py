"""Atomic writes keep the usual permissions, whatever the writer inside the block does to the temp file."""

from __future__ import annotations

import os
from pathlib import Path

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
