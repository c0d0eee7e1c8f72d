"""A Triton repository write that fails part-way (a full disk) changes nothing and leaves no staging folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from tiny_models import export_tiny

from sedeploy.errors import BadInputError
from sedeploy.serving.triton import write_repository


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("triton_failures") / "model.onnx")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_forced_replace_whose_final_rename_fails_keeps_the_old_model(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    old = repository / "se_preact_resnet"
    (old / "1").mkdir(parents=True)
    (old / "1" / "model.onnx").write_bytes(b"the model being replaced\n")
    (old / "config.pbtxt").write_text('name: "se_preact_resnet"\n', encoding="utf-8")
    before = _tree(repository)
    real_replace = os.replace

    def replace(source: os.PathLike[str] | str, destination: os.PathLike[str] | str) -> None:
        if Path(destination) == old and Path(source).name.endswith(".tmp"):  # staging -> model folder
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(destination))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(BadInputError, match=r"No space left on device.*free disk space there") as raised:
        write_repository([model], repository, force=True)
    monkeypatch.undo()
    assert "\n" not in str(raised.value)
    assert _tree(repository) == before
    assert sorted(p.name for p in repository.iterdir()) == ["se_preact_resnet"]  # no .tmp / .old folder


def test_the_same_replace_succeeds_when_the_disk_has_room(model: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "se_preact_resnet" / "1").mkdir(parents=True)
    (repository / "se_preact_resnet" / "1" / "model.onnx").write_bytes(b"old\n")
    write_repository([model], repository, force=True)
    assert (repository / "se_preact_resnet" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert sorted(p.name for p in repository.iterdir()) == ["se_preact_resnet"]
