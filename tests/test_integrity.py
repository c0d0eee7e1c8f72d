"""Integrity: every built artifact is hash-checked on load, and a calibration cache is bound to what it measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from digits import cpu_int8_options
from onnx import numpy_helper

import sedeploy
from sedeploy.artifacts.manifest import ManifestError, manifest_path, read_manifest
from sedeploy.build import BuildOptions, build_engine
from sedeploy.files import sha256_of_file
from sedeploy.precision import CalibrationRanges, Int8Recipe, calibration_cache_path


@pytest.fixture
def built(trained_digits, tmp_path: Path) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    """A private copy of the trained model, its FP32 ONNX Runtime build (with manifest) and the calibration folder."""
    model = tmp_path / "model" / "digits.onnx"
    model.parent.mkdir()
    shutil.copy(trained_digits.onnx_path, model)
    result = build_engine(model, BuildOptions(precision="fp32", backend="onnxruntime"))
    return model, result.artifact, trained_digits.calib_dir


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_built_artifact_loads_and_its_manifest_hash_is_checked(
    built: tuple[Path, Path, Path], trained_digits
) -> None:  # type: ignore[no-untyped-def]
    _, artifact, _ = built
    assert read_manifest(artifact).artifact_sha256 == sha256_of_file(artifact)
    with sedeploy.load(artifact, device="cpu") as runner:
        assert runner.manifest is not None  # type: ignore[attr-defined]
        assert runner(trained_digits.test_images[:4]).shape == (4, 10)


def test_a_changed_artifact_is_refused_unless_verify_hash_is_false(built: tuple[Path, Path, Path]) -> None:
    _, artifact, _ = built
    with sedeploy.load(artifact, device="cpu") as runner:
        expected = runner(np.zeros((1, 1, 32, 32), np.float32))
    # Same length, different bytes: a metadata string inside the protobuf, so the file still parses.
    data = artifact.read_bytes()
    marker = b"se_preact_resnet"
    assert marker in data
    artifact.write_bytes(data.replace(marker, b"SE_PREACT_RESNET", 1))
    with pytest.raises(ManifestError, match=r"does not match its manifest \(sha256 .*verify_hash=False"):
        sedeploy.load(artifact, device="cpu")
    with sedeploy.load(artifact, device="cpu", verify_hash=False) as runner:
        assert runner.manifest is not None  # type: ignore[attr-defined]  # still read, just not hashed
        np.testing.assert_array_equal(runner(np.zeros((1, 1, 32, 32), np.float32)), expected)


def test_a_truncated_artifact_is_refused_with_its_manifest(built: tuple[Path, Path, Path]) -> None:
    _, artifact, _ = built
    artifact.write_bytes(artifact.read_bytes()[:-100])
    with pytest.raises(ManifestError, match="rebuild it"):
        sedeploy.load(artifact, device="cpu")


def test_a_broken_manifest_is_refused_even_without_hashing(built: tuple[Path, Path, Path]) -> None:
    _, artifact, _ = built
    manifest_path(artifact).write_text('{"manifest_version": 1, "precision": 7}', encoding="utf-8")
    for verify_hash in (True, False):
        with pytest.raises(ManifestError, match="not a valid sedeploy manifest"):
            sedeploy.load(artifact, device="cpu", verify_hash=verify_hash)


def test_an_onnx_without_a_manifest_has_nothing_to_verify(built: tuple[Path, Path, Path]) -> None:
    model, _, _ = built
    assert not manifest_path(model).exists()
    with sedeploy.load(model, device="cpu") as runner:
        assert runner.manifest is None  # type: ignore[attr-defined]
        assert runner.metadata is not None  # the exported ONNX describes itself


def test_openvino_ir_checks_both_files_unless_verify_hash_is_false(built: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("openvino")
    model, _, _ = built
    xml = build_engine(model, BuildOptions(precision="fp32", backend="openvino")).artifact
    assert not list(xml.parent.glob(".*")), "no staging folder or temporary file is left"
    sedeploy.load(xml).close()
    _flip_last_byte(xml.with_suffix(".bin"))
    with pytest.raises(ManifestError, match=r"\.bin is missing or does not match.*verify_hash=False"):
        sedeploy.load(xml)
    sedeploy.load(xml, verify_hash=False).close()


def _int8_options(calib: Path, **extra: object) -> BuildOptions:
    return cpu_int8_options(calib, **{"calib_size": 32, **extra})


def test_calibration_cache_is_not_reused_for_another_model(built: tuple[Path, Path, Path]) -> None:
    model, _, calib = built
    first = build_engine(model, _int8_options(calib))
    assert first.calibration is not None and first.calibration["reused"] is False
    cache = calibration_cache_path(model, Int8Recipe(flavour="cpu"))
    cached = CalibrationRanges.read(cache)
    assert cached is not None and cached.model_sha256 == sha256_of_file(model)
    # Another model of the same name in the same place (other weights): its hash differs, so it recalibrates.
    proto = onnx.load(str(model))
    weights = max(proto.graph.initializer, key=lambda tensor: len(tensor.raw_data))
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.5, weights.name))
    onnx.save_model(proto, str(model))
    second = build_engine(model, _int8_options(calib))
    assert second.calibration is not None and second.calibration["reused"] is False
    rewritten = CalibrationRanges.read(cache)
    assert rewritten is not None and rewritten.model_sha256 == sha256_of_file(model) != cached.model_sha256


def test_calibration_cache_is_not_reused_when_preprocessing_changes(built: tuple[Path, Path, Path]) -> None:
    """Same files, same model, other normalisation: the images the ranges were measured on differ."""
    model, _, calib = built
    first = build_engine(model, _int8_options(calib))
    assert first.calibration is not None and first.calibration["reused"] is False
    again = build_engine(model, _int8_options(calib))
    assert again.calibration is not None and again.calibration["reused"] is True
    # Other normalisation than the model was trained with: INT8 drifts from FP32 and the parity gate would
    # refuse to publish; the cache decision is what this test is about.
    shifted = build_engine(
        model, _int8_options(calib, preprocessing_overrides={"mean": (0.2,), "std": (0.4,)}, gate=False)
    )
    assert shifted.calibration is not None and shifted.calibration["reused"] is False
    assert shifted.calibration["dataset_sha256"] == first.calibration["dataset_sha256"]  # same files
    cache = json.loads(calibration_cache_path(model, Int8Recipe(flavour="cpu")).read_text())
    assert cache["images_sha256"]
