"""The checkpoint's own record drives every stage, builds gate on their own check, and wrong references fail.

Everything runs on the shipped digits model (``models/digits_se_resnet``: weights, ``model.json``, labels and
its held-out folder of 449 images), as a user of the README would.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import sedeploy
from sedeploy.artifacts.manifest import read_manifest
from sedeploy.cli import cli
from sedeploy.data import list_images

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "digits_se_resnet"
HELDOUT = SHIPPED / "heldout"
CALIBRATION = SHIPPED.parents[1] / "calibration"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped checkpoint with its record and labels (tests must not write beside the original)."""
    folder = tmp_path_factory.mktemp("shipped")
    for name in ("model.safetensors", "model.json", "labels.txt"):
        shutil.copy(SHIPPED / name, folder / name)
    return folder / "model.safetensors"


@pytest.fixture(scope="module")
def exported(checkpoint: Path) -> Path:
    """``sedeploy export --weights model.safetensors`` with no ARCH, size or labels: the record gives them."""
    output = checkpoint.with_name("model.onnx")
    result = CliRunner().invoke(cli, ["export", "--weights", str(checkpoint), "-o", str(output)])
    assert result.exit_code == 0, result.output
    return output


def _heldout() -> tuple[list[Path], list[int]]:
    entries, class_names = list_images(HELDOUT)
    assert class_names is not None
    return [path for path, _ in entries], [int(class_names[label or 0]) for _, label in entries]


def _accuracy(predicted: list[str], labels: list[int]) -> float:
    return float(np.mean([int(name) == label for name, label in zip(predicted, labels, strict=True)]))


def test_export_takes_size_labels_and_architecture_from_the_record(exported: Path) -> None:
    metadata = sedeploy.read_metadata(exported)
    assert metadata.arch == "se_preact_resnet" and metadata.input_size == (1, 32, 32)
    assert metadata.labels == tuple(str(digit) for digit in range(10))
    record = json.loads((SHIPPED / "model.json").read_text())
    assert list(metadata.preprocessing.mean) == record["preprocessing"]["mean"]


@pytest.mark.parametrize("source", ["weights", "onnx"])
def test_the_shipped_checkpoint_scores_on_its_heldout_folder(
    checkpoint: Path, exported: Path, source: str
) -> None:
    files, labels = _heldout()
    with sedeploy.load(checkpoint if source == "weights" else exported) as runner:
        assert runner.input_spec.shape == (None, 1, 32, 32)
        predicted = [result.label for result in runner.classify(files, top_k=1)]
    assert _accuracy(predicted, labels) >= 0.98


def test_predict_on_the_weights_file_scores_on_its_heldout_folder(checkpoint: Path) -> None:
    result = CliRunner().invoke(cli, ["predict", str(checkpoint), str(HELDOUT), "--top-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["predictions"]
    assert len(rows) == 449
    correct = [Path(row["path"]).parent.name == row["labels"][0] for row in rows]
    assert np.mean(correct) >= 0.98


def test_an_explicit_size_against_the_record_fails_with_one_line(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "model.onnx"
    result = CliRunner().invoke(
        cli, ["export", "--weights", str(checkpoint), "--img-size", "224", "-o", str(output)]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "--img-size 224x224 contradicts the training record" in lines[0] and "(32x32)" in lines[0]
    assert "--override" in lines[0] and not output.exists()


def test_a_weights_file_without_a_record_is_not_run_at_a_guessed_size(
    checkpoint: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "model.safetensors"
    shutil.copy(checkpoint, bare)
    with pytest.raises(sedeploy.ConfigError, match="no training record"):
        sedeploy.load(bare)
    result = CliRunner().invoke(
        cli, ["export", "se_preact_resnet", "--weights", str(bare), "-o", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 2 and "pass --img-size" in result.stderr


def test_verify_blames_a_wrong_sized_reference(checkpoint: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "model224.onnx"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--weights",
            str(checkpoint),
            "--img-size",
            "224",
            "--override",
            "-o",
            str(wrong),
            "--no-check",
        ],
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["verify", str(wrong), "--reference", str(checkpoint), "--data", str(HELDOUT), "--num", "64"]
    )
    assert result.exit_code == 1, result.output
    assert "the reference, not the artifact, is wrong" in result.stdout
    assert "says 1x32x32 but it is fed 1x224x224" in result.stdout


def test_classify_takes_what_a_service_holds(exported: Path) -> None:
    path = next(iter(sorted((HELDOUT / "7").iterdir())))
    data = path.read_bytes()
    with sedeploy.load(exported) as runner:
        by_path = runner.classify(path)[0]
        by_bytes = runner.classify(data)[0]
        by_stream = runner.classify(io.BytesIO(data))[0]
        by_image = runner.classify(Image.open(path))[0]
        several = runner.classify([data, io.BytesIO(data), path])
    assert by_path.label == "7"
    for other in (by_bytes, by_stream, by_image, *several):
        assert other.labels == by_path.labels
        np.testing.assert_allclose(other.probabilities, by_path.probabilities, rtol=1e-6)


def test_an_int8_build_below_the_verify_thresholds_publishes_nothing(exported: Path) -> None:
    args = ["build-engine", str(exported), "--int8", "--target", "cpu", "--backend", "onnxruntime"]
    # Ranges cut at the 90th percentile clip every large activation: parity far below verify's thresholds.
    args += ["--calib-dir", str(CALIBRATION), "--calib-size", "32", "--calib-method", "percentile"]
    args += ["--percentile", "90"]

    def artifacts() -> list[str]:  # what a runner could load; the calibration cache is no artifact
        return sorted(
            path.name for path in exported.parent.iterdir() if path.name.endswith((".onnx", ".json"))
        )

    before = [name for name in artifacts() if ".calibration." not in name]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    line = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(line) == 1 and "parity below verify's thresholds" in line[0], result.stderr
    assert "--float-se" in line[0] and "--calib-method" in line[0] and "--no-gate" in line[0]
    assert [name for name in artifacts() if ".calibration." not in name] == before

    published = CliRunner().invoke(cli, [*args, "--no-gate", "--json"])
    assert published.exit_code == 0, published.output
    report = json.loads(published.stdout)
    assert any("published anyway" in note for note in report["notes"])
    assert any("calibrated on 32 images" in note for note in report["notes"])
    manifest = read_manifest(report["artifacts"][0])
    assert manifest.build_options["gate"] is False
    assert manifest.recipe["parity_gate"] == "failed, published with gate=False"
