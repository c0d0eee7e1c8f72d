"""sedeploy predict: one row per readable image, a warning per unreadable one, batched, JSON for machines."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from bad_inputs_cases import special_files
from click.testing import CliRunner
from digits import TrainedDigits

from sedeploy.cli import cli
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import refuse_output_over_input
from sedeploy.predict import collect_images, input_files, predict
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


def test_special_files_are_skipped_named_once_and_refused_when_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No model is needed to see what predict would read: a pipe, socket or device is never among the files."""
    folder = tmp_path / "images"
    special_files(folder)
    (folder / "real.png").write_bytes(b"a png, as far as the walk can tell")
    direct = special_files(tmp_path / "direct")
    with caplog.at_level(logging.WARNING):
        files, skipped, any_folder = collect_images([folder, direct["pipe.png"], direct["zero.png"]])
    assert files == [folder / "real.png"] and any_folder
    reasons = {Path(skip.path).relative_to(tmp_path).as_posix(): skip.reason for skip in skipped}
    assert reasons["direct/pipe.png"] == "a named pipe, not a regular file"
    assert reasons["direct/zero.png"] == "a link to /dev/zero, a character device, not a regular file"
    assert reasons["images/random.jpg"] == "a link to /dev/urandom, a character device, not a regular file"
    assert len(reasons) == 8
    summary = [r.getMessage() for r in caplog.records if "not regular files" in r.getMessage()]
    assert summary == [summary[0]] and summary[0].startswith(
        f"skipped 6 files that are not regular files in {folder}"
    )


def test_input_files_name_what_a_report_file_could_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    pairs = input_files(tmp_path / "m.ort.onnx", [folder, tmp_path / "b.png"], [str(folder / "a.png"), None])
    assert pairs == [
        ("the artifact", tmp_path / "m.ort.onnx"),
        ("the artifact's manifest", tmp_path / "m.ort.onnx.manifest.json"),
        ("an image", folder / "a.png"),
        ("an image", tmp_path / "b.png"),
    ]
    with pytest.raises(ConfigError, match=r"json_out .*a.png is an image .*a.png \(the same file\)"):
        refuse_output_over_input([("json_out", str(folder / "a.png"))], pairs)
