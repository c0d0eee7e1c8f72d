"""sedeploy predict: one row per readable image, a warning per unreadable one, batched, JSON for machines."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from digits import TrainedDigits

from sedeploy.cli import cli
from sedeploy.errors import BadInputError
from sedeploy.predict import predict
from sedeploy.runtime import load


@pytest.fixture()
def mixed_folder(trained_digits: TrainedDigits, tmp_path: Path) -> Path:
    """Five real digit images (one in a sub-folder), a corrupt PNG, a text file named .jpg, and a README."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    sources = sorted((trained_digits.test_dir / "4").iterdir())[:5]
    for index, source in enumerate(sources[:4]):
        shutil.copy(source, folder / f"digit{index}.png")
    shutil.copy(sources[4], folder / "more" / "digit4.png")
    (folder / "corrupt.png").write_bytes(sources[0].read_bytes()[:40])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "README.txt").write_text("ignored: not an image extension")
    return folder


def test_predict_folder_gives_one_row_per_readable_image_and_a_warning_per_unreadable(
    trained_digits: TrainedDigits, mixed_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sedeploy.predict"):
        report = predict(trained_digits.onnx_path, [mixed_folder], top_k=3, batch=2)
    names = [Path(row.path).name for row in report.predictions]
    assert names == ["digit0.png", "digit1.png", "digit2.png", "digit3.png", "digit4.png"]
    assert all(row.classification.label == "4" for row in report.predictions)
    assert all(len(row.classification.labels) == 3 for row in report.predictions)
    assert sorted(Path(skip.path).name for skip in report.skipped) == ["corrupt.png", "notes.jpg"]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("corrupt.png" in message for message in warnings)
    assert any("notes.jpg" in message for message in warnings)


def test_predict_batches_match_single_images(trained_digits: TrainedDigits, mixed_folder: Path) -> None:
    with load(trained_digits.onnx_path) as runner:
        batched = predict(runner, [mixed_folder], batch=4)
        single = predict(runner, [mixed_folder], batch=1)
        assert not runner.closed  # an open runner passed in stays open
    for a, b in zip(batched.predictions, single.predictions, strict=True):
        assert a.classification.indices == b.classification.indices


def test_predict_cli_json_and_missing_paths(trained_digits: TrainedDigits, mixed_folder: Path) -> None:
    image = mixed_folder / "digit0.png"
    missing = mixed_folder / "missing.png"
    result = CliRunner().invoke(
        cli, ["predict", str(trained_digits.onnx_path), str(image), str(missing), "--top-k", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [row["path"] for row in report["predictions"]] == [str(image)]
    assert (
        report["predictions"][0]["labels"][0] == "4" and len(report["predictions"][0]["probabilities"]) == 2
    )
    assert report["skipped"] == [{"path": str(missing), "reason": "does not exist"}]
    text = CliRunner().invoke(cli, ["predict", str(trained_digits.onnx_path), str(image)])
    assert text.exit_code == 0 and text.output.startswith(f"{image}\t4 ")


def test_predict_fails_when_nothing_is_readable(trained_digits: TrainedDigits, mixed_folder: Path) -> None:
    with pytest.raises(BadInputError, match="no readable image"):
        predict(trained_digits.onnx_path, [mixed_folder / "corrupt.png"])
    result = CliRunner().invoke(
        cli, ["predict", str(trained_digits.onnx_path), str(mixed_folder / "notes.jpg")]
    )
    assert result.exit_code == 1 and "no readable image" in result.output
    usage = CliRunner().invoke(cli, ["predict", str(trained_digits.onnx_path)])
    assert usage.exit_code == 2
