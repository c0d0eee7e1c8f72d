"""``sedeploy train``: a tiny ImageFolder in, a checkpoint that export accepts out; resume, determinism, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from digits_images import write_digits_imagefolder
from PIL import Image

from sedeploy.artifacts.metadata import read_metadata
from sedeploy.cli import cli
from sedeploy.errors import ConfigError
from sedeploy.export import export_onnx
from sedeploy.models.checkpoint import read_checkpoint
from sedeploy.train import (
    TrainConfig,
    TrainingError,
    learning_rate,
    plain_twin_config,
    train,
)

TINY = {"depths": (1, 1), "widths": (8, 16), "reduction": 4}


def _write_shapes(root: Path, per_class: int = 12, classes: tuple[str, ...] = ("bar", "square")) -> Path:
    """Two easily told apart classes of 16x16 grayscale PNGs: a horizontal bar and a filled square."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 40, (16, 16)).astype(np.uint8)
            offset = int(rng.integers(2, 6))
            if name == "bar":
                pixels[offset : offset + 3, 1:15] = 255
            else:
                pixels[offset : offset + 8, offset : offset + 8] = 255
            Image.fromarray(pixels, mode="L").save(root / name / f"{index:02d}.png")
    return root


def _config(**changes: object) -> TrainConfig:
    settings: dict = dict(
        arch="se_preact_resnet",
        img_size=(16, 16),
        in_chans=1,
        options=dict(TINY),
        epochs=2,
        batch_size=8,
        lr=3e-3,
        val_split=0.25,
        seed=0,
    )
    settings.update(changes)
    return TrainConfig(**settings)


def test_two_epochs_give_a_checkpoint_that_export_accepts(tmp_path: Path) -> None:
    data = _write_shapes(tmp_path / "shapes")
    seen: list[int] = []
    result = train(data, _config(), tmp_path / "run", on_epoch=lambda metrics: seen.append(metrics.epoch))

    assert seen == [1, 2] and [m.epoch for m in result.history] == [1, 2]
    assert result.labels == ("bar", "square") and (result.train_images, result.val_images) == (18, 6)
    record = json.loads(result.record.read_text())
    assert record["arch"] == "se_preact_resnet" and record["labels"] == ["bar", "square"]
    assert record["options"]["in_chans"] == 1 and record["options"]["num_classes"] == 2
    assert record["preprocessing"]["crop"] == [16, 16] and len(record["history"]) == 2
    assert (tmp_path / "run" / "labels.txt").read_text().split() == ["bar", "square"]
    with Image.open(result.curves) as curves:
        assert curves.format == "PNG" and curves.width > 400

    checkpoint = read_checkpoint(result.checkpoint)
    assert checkpoint.arch == "se_preact_resnet" and checkpoint.recorded_options is not None
    exported = export_onnx(
        "se_preact_resnet",
        weights=result.checkpoint,
        img_size=16,
        labels=tmp_path / "run" / "labels.txt",
        output=tmp_path / "model.onnx",
    )
    metadata = read_metadata(exported.path)
    assert metadata.input_size == (1, 16, 16) and metadata.num_classes == 2
    assert metadata.labels == ("bar", "square")
    assert metadata.preprocessing.mean == tuple(record["preprocessing"]["mean"])


def test_same_seed_gives_same_weights_and_resume_continues_from_saved_epoch(tmp_path: Path) -> None:
    data = _write_shapes(tmp_path / "shapes")
    straight = train(data, _config(), tmp_path / "straight")
    again = train(data, _config(), tmp_path / "again")
    assert [m.val_loss for m in straight.history] == [m.val_loss for m in again.history]

    first = train(data, _config(epochs=1), tmp_path / "resumed")
    resumed = train(data, _config(epochs=2), tmp_path / "resumed", resume=True)
    assert resumed.resumed_from == 1 and [m.epoch for m in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]  # epoch 1 was read back, not trained again
    assert resumed.history[1].train_loss != straight.history[1].train_loss  # other schedule (1 -> 2 epochs)
    record = json.loads(resumed.record.read_text())
    assert [entry["epoch"] for entry in record["history"]] == [1, 2]

    with pytest.raises(TrainingError, match="already holds 2 epoch"):
        train(data, _config(epochs=2), tmp_path / "resumed", resume=True)
    with pytest.raises(TrainingError, match="was trained as se_preact_resnet"):
        train(data, _config(epochs=3, options={**TINY, "reduction": 2}), tmp_path / "resumed", resume=True)


def test_one_class_flat_or_empty_folders_fail_with_one_line(tmp_path: Path) -> None:
    one_class = _write_shapes(tmp_path / "one", classes=("bar",))
    with pytest.raises(TrainingError, match="only one class folder") as error:
        train(one_class, _config(), tmp_path / "out")
    assert "\n" not in str(error.value)

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    with pytest.raises(TrainingError, match="holds no images"):
        train(empty, _config(), tmp_path / "out")
    with pytest.raises(TrainingError, match="not an ImageFolder"):
        train(tmp_path / "empty" / "a", _config(), tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_outputs_that_are_inputs_are_refused_before_any_work(tmp_path: Path) -> None:
    """Inside the data (a new class folder or a curves.png among the images next time), over the initial
    weights or their record, or onto a pipe: each is one line, exit 2, and nothing is written or read."""
    data = _write_shapes(tmp_path / "shapes", per_class=2)
    _write_shapes(tmp_path / "shapes-val", per_class=1)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    for output in (data, data / "bar", data / "runs"):
        with pytest.raises(
            ConfigError, match=r"output .* is inside the training data folder .*shapes"
        ) as error:
            train(data, _config(), output)
        assert error.value.params == ("output",) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="is inside the validation folder"):
        train(data, _config(val_dir=tmp_path / "shapes-val"), tmp_path / "shapes-val" / "run")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"earlier weights, fine-tuned from: must survive")
    with pytest.raises(ConfigError, match=r"model.safetensors is the initial weights .*\(the same file\)"):
        train(data, _config(weights=run / "model.safetensors"), run)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.safetensors").symlink_to(run / "model.safetensors")
    with pytest.raises(ConfigError, match="is the initial weights"):
        train(data, _config(weights=tmp_path / "elsewhere" / "w.safetensors"), run)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ConfigError, match="pipe is a named pipe, not a folder"):
        train(data, _config(), tmp_path / "pipe")
    assert (run / "model.safetensors").read_bytes() == b"earlier weights, fine-tuned from: must survive"
    after = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    assert [path for path in after if path not in before] == [
        Path("elsewhere"),
        Path("elsewhere/w.safetensors"),
        Path("pipe"),
        Path("run"),
        Path("run/model.safetensors"),
    ]


def test_cli_train_and_export(tmp_path: Path) -> None:
    data = _write_shapes(tmp_path / "shapes")
    runner = CliRunner()
    args = ["train", str(data), "--arch", "se_preact_resnet", "--img-size", "16", "--in-chans", "1"]
    args += ["--epochs", "1", "--batch", "8", "-o", str(tmp_path / "run"), "--json"]
    for key, value in TINY.items():
        args += ["-O", f"{key}={value}"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["best_epoch"] == 1 and report["labels"] == ["bar", "square"]

    exported = runner.invoke(
        cli,
        [
            "export",
            "se_preact_resnet",
            "--weights",
            report["checkpoint"],
            "--img-size",
            "16",
            "-o",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert exported.exit_code == 0, exported.output

    one_class = _write_shapes(tmp_path / "one", classes=("bar",))
    failed = runner.invoke(
        cli, ["train", str(one_class), "--arch", "se_preact_resnet", "-o", str(tmp_path / "x")]
    )
    assert failed.exit_code == 1
    assert failed.stderr.startswith("error: ") and "only one class folder" in failed.stderr


def test_schedules_and_plain_twin() -> None:
    total = 100
    cosine = [learning_rate(step, total, 1.0, "cosine") for step in range(total)]
    assert cosine[0] < cosine[5] and max(cosine) == pytest.approx(1.0, abs=0.01) and cosine[-1] < 0.01
    onecycle = [learning_rate(step, total, 1.0, "onecycle") for step in range(total)]
    assert onecycle[0] == pytest.approx(0.04) and int(np.argmax(onecycle)) == 30 and onecycle[-1] < 1e-3

    twin = plain_twin_config(_config())
    assert twin.arch == "preact_resnet" and "reduction" not in twin.options
    assert twin.options["widths"] == TINY["widths"]
    with pytest.raises(ConfigError, match="no plain twin"):
        plain_twin_config(_config(arch="preact_resnet"))


def test_digits_folders_keep_heldout_and_calibration_apart(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    train_dir, heldout_dir, calibration_dir = write_digits_imagefolder(tmp_path, calibration_count=50)
    assert calibration_dir is not None
    heldout = {path.name for path in heldout_dir.rglob("*.png")}
    training = {path.name for path in train_dir.rglob("*.png")}
    calibration = {path.name for path in calibration_dir.glob("*.png")}
    assert len(heldout) == 449 and len(training) == 1797 - 449 and len(calibration) == 50
    assert not heldout & training and calibration <= training
    assert sorted(p.name for p in train_dir.iterdir()) == [str(digit) for digit in range(10)]
    with Image.open(next(heldout_dir.rglob("*.png"))) as image:
        assert image.mode == "L" and image.size == (32, 32)
