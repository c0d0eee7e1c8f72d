"""build-engine on ONNX Runtime: manifests, the calibration cache, the image-set report, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from digits import cpu_int8_options
from PIL import Image

from sedeploy.artifacts.manifest import manifest_path, read_manifest
from sedeploy.build import BuildOptions, build_engine
from sedeploy.data import images_decoded
from sedeploy.errors import BadInputError
from sedeploy.files import sha256_of_file
from sedeploy.precision import DEFAULT_CALIBRATION_METHOD, Int8Recipe, calibration_cache_path


@pytest.fixture
def workdir(trained_digits, tmp_path: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """A private copy of the trained model and of its calibration folder."""
    model = tmp_path / "model" / "digits.onnx"
    model.parent.mkdir()
    shutil.copy(trained_digits.onnx_path, model)
    calib = tmp_path / "calib"
    shutil.copytree(trained_digits.calib_dir, calib)
    return model, calib


def _int8(calib: Path, **extra: object) -> BuildOptions:
    return cpu_int8_options(calib, **{"calib_size": 64, **extra})


def test_manifest_describes_each_artifact(workdir: tuple[Path, Path]) -> None:
    model, calib = workdir
    result = build_engine(model, _int8(calib))
    assert [p.name for p in result.artifacts] == ["digits.int8-cpu.onnx", "digits.int8-cpu.ort.onnx"]
    for artifact in result.artifacts:
        manifest = read_manifest(artifact)
        manifest.check_artifact(artifact)
        assert manifest.precision == "int8"
        assert manifest.backend == "onnxruntime" and manifest.backend_version
        assert manifest.source_onnx_sha256 == sha256_of_file(model)
        assert manifest.source_metadata["arch"] == "se_preact_resnet"
        assert manifest.recipe["flavour"] == "cpu"
        assert manifest.calibration is not None
        assert (
            manifest.calibration["images"] == 64
            and manifest.calibration["method"] == DEFAULT_CALIBRATION_METHOD
        )
        assert manifest.device["description"]
    optimized = json.loads(manifest_path(result.artifacts[1]).read_text())
    assert optimized["device"]["optimization_level"] == "all"


def test_fp32_build_writes_only_the_optimized_graph(workdir: tuple[Path, Path]) -> None:
    model, _ = workdir
    before = sha256_of_file(model)
    result = build_engine(model, BuildOptions(precision="fp32", backend="onnxruntime"))
    assert [p.name for p in result.artifacts] == ["digits.ort.onnx"]
    assert result.fidelity is None and result.manifests[0].calibration is None
    assert sha256_of_file(model) == before


def test_second_build_reuses_calibration_and_a_changed_image_invalidates_it(
    workdir: tuple[Path, Path],
) -> None:
    model, calib = workdir
    first = build_engine(model, _int8(calib, calib_size=128))  # every image, so the changed one is used
    assert first.calibration is not None and first.calibration["reused"] is False
    cache = calibration_cache_path(model, Int8Recipe(flavour="cpu"))
    assert cache.is_file() and cache.with_suffix(".trt.cache").is_file()
    decoded = images_decoded()
    second = build_engine(model, _int8(calib, calib_size=128))
    assert second.calibration is not None and second.calibration["reused"] is True
    assert images_decoded() == decoded  # preprocessed images came from the cache too
    assert read_manifest(second.artifact).calibration["reused"] is True  # type: ignore[index]
    # Change one image's bytes: the dataset hash changes, so both caches are stale.
    victim = sorted(calib.glob("*.png"))[0]
    pixels = np.asarray(Image.open(victim)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(victim)
    third = build_engine(model, _int8(calib, calib_size=128))
    assert third.calibration is not None and third.calibration["reused"] is False
    assert third.calibration["dataset_sha256"] != first.calibration["dataset_sha256"]
    forced = build_engine(model, _int8(calib, calib_size=128, recalibrate=True))
    assert forced.calibration is not None and forced.calibration["reused"] is False


def test_tensorrt_calibration_cache_format(workdir: tuple[Path, Path]) -> None:
    model, calib = workdir
    build_engine(model, _int8(calib, target="tensorrt"))
    cache = calibration_cache_path(model, Int8Recipe(flavour="tensorrt"))
    ranges = json.loads(cache.read_text())
    lines = cache.with_suffix(".trt.cache").read_text().splitlines()
    assert lines[0].startswith("TRT-") and lines[0].endswith("-EntropyCalibration2")
    entries = dict(line.split(": ") for line in lines[1:])
    assert set(entries) == set(ranges["amax"])
    name, amax = next(iter(ranges["amax"].items()))
    scale = np.frombuffer(bytes.fromhex(entries[name]), dtype=">f4")[0]
    assert scale == pytest.approx(amax / 127.0, rel=1e-6)


def test_skipped_files_are_counted_in_the_manifest(workdir: tuple[Path, Path]) -> None:
    model, calib = workdir
    (calib / "zero.png").write_bytes(b"")
    (calib / "random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (calib / "rgb.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(calib / "rgb.png")  # 3 channels for a 1-channel model
    result = build_engine(model, _int8(calib, calib_size=1000))
    calibration = read_manifest(result.artifact).calibration
    assert calibration is not None
    skipped = {entry["path"] for entry in calibration["skipped"]}
    assert skipped == {"zero.png", "random.jpg"}
    assert calibration["images"] == 128 + 1  # the RGB image was converted, not rejected
    assert calibration["found"] == 128 + 3


@pytest.mark.parametrize(
    "setup,fragment",
    [
        ("missing_calib", "does not exist"),
        ("empty_calib", "no images"),
        ("corrupt_calib", "no usable image"),
        ("not_onnx", "is not a readable ONNX file"),
        ("missing_model", "does not exist"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    workdir: tuple[Path, Path], setup: str, fragment: str
) -> None:
    model, calib = workdir
    if setup == "missing_calib":
        calib = calib.parent / "nowhere"
    elif setup == "empty_calib":
        calib = calib.parent / "empty"
        calib.mkdir()
    elif setup == "corrupt_calib":
        calib = calib.parent / "corrupt"
        calib.mkdir()
        for index in range(3):
            (calib / f"bad{index}.png").write_bytes(b"\x89PNG not really")
    elif setup == "not_onnx":
        model.write_text("this is not a model")
    elif setup == "missing_model":
        model = model.parent / "absent.onnx"
    before = sorted(p.name for p in model.parent.iterdir())
    with pytest.raises(BadInputError) as excinfo:
        build_engine(model, _int8(calib))
    assert fragment in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert sorted(p.name for p in model.parent.iterdir()) == before


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sedeploy", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_build_engine_json_and_exit_codes(workdir: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = workdir
    result = _cli(
        "build-engine", str(model), "--int8", "--calib-dir", str(calib), "--calib-size", "32",
        "--backend", "onnxruntime", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # --backend auto's probe through the CLI: tests/backends/test_openvino.py (test_auto_cli_probes_...)
    assert report["backend"] == "onnxruntime" and report["precision"] == "int8"
    assert report["calibration"]["images"] == 32
    assert report["fidelity"]["finite"] is True
    assert all(Path(path).is_file() for path in report["artifacts"] + report["manifests"])

    usage = _cli("build-engine", str(model), "--int8", "--fp16")
    assert usage.returncode == 2 and "at most one of --fp16, --bf16 and --int8" in usage.stderr

    before = sorted(p.name for p in model.parent.iterdir())
    for args, fragment in [
        ((str(tmp_path / "absent.onnx"), "--fp16"), "does not exist"),
        ((str(model), "--int8", "--calib-dir", str(tmp_path / "nowhere")), "does not exist"),
        ((str(model), "--fp16", "-o", "/proc/sedeploy/x.onnx"), "choose a writable output path"),
        ((str(model), "--fp16", "--backend", "tensorrt"), "pip install 'sedeploy[tensorrt]'"),
    ]:
        failed = _cli("build-engine", *args)
        assert failed.returncode == 1, (args, failed.stderr)
        assert fragment in failed.stderr and failed.stderr.count("\n") == 1, failed.stderr
        assert "Traceback" not in failed.stderr
    assert sorted(p.name for p in model.parent.iterdir()) == before
