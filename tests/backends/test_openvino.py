"""OpenVINO backend: the NNCF INT8 IR of the trained fixture model passes verify, manifests are enforced,
telemetry stays off, and a missing extra is one line."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import sedeploy
from sedeploy.artifacts.manifest import ManifestError, read_manifest
from sedeploy.build import BuildOptions, build_engine
from sedeploy.cli import cli
from sedeploy.errors import MissingDependencyError
from sedeploy.measure.search import TIE_BAND
from sedeploy.verify import verify

openvino = pytest.importorskip(
    "openvino", reason="OpenVINO is not installed: pip install 'sedeploy[openvino]'"
)


@pytest.fixture(scope="module")
def int8_ir(trained_digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("openvino")
    model = folder / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    result = build_engine(
        model,
        BuildOptions(precision="int8", backend="openvino", calib_dir=trained_digits.calib_dir),
    )
    assert result.artifact == folder / "digits.int8.openvino.xml"
    assert result.fidelity is not None and result.fidelity.mean_cosine > 0.99
    return result.artifact


def test_int8_ir_passes_verify_against_fp32_with_the_int8_thresholds(int8_ir: Path, trained_digits) -> None:  # type: ignore[no-untyped-def]
    manifest = read_manifest(int8_ir)
    assert (manifest.backend, manifest.precision, manifest.artifact_format) == (
        "openvino",
        "int8",
        "openvino_ir",
    )
    assert manifest.calibration is not None and manifest.calibration["images"] == 128
    report = verify(int8_ir, data=trained_digits.test_dir)
    assert report.passed, report.to_text()
    assert report.precision == "int8"
    with sedeploy.load(int8_ir, hint="throughput") as runner:
        assert runner.backend == "openvino" and runner.metadata is not None
        logits = runner(trained_digits.test_images[:9])
    assert logits.shape == (9, 10)
    assert (logits.argmax(1) == trained_digits.test_labels[:9]).mean() >= 0.8


def test_a_changed_weights_file_is_refused_on_load(int8_ir: Path, tmp_path: Path) -> None:
    for name in (int8_ir.name, int8_ir.with_suffix(".bin").name, int8_ir.name + ".manifest.json"):
        shutil.copy(int8_ir.parent / name, tmp_path / name)
    copy = tmp_path / int8_ir.name
    with sedeploy.load(copy) as runner:
        assert runner.manifest is not None
    weights = copy.with_suffix(".bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="rebuild it"):
        sedeploy.load(copy)


def test_telemetry_stays_off_without_a_prompt_or_a_file(tmp_path: Path) -> None:
    """In a fresh process (not pytest, where NNCF stubs itself): NNCF gets its no-op stub, no consent file appears."""
    code = (
        "from sedeploy.backends import openvino as ov\n"
        "ov.nncf(); ov.openvino()\n"
        "import nncf.telemetry.wrapper as wrapper\n"
        "print(type(wrapper.telemetry).__name__)\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    env.pop("NNCF_CI", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MagicMock"
    assert list(tmp_path.rglob("*")) == []  # no consent folder or client id written in HOME


def test_missing_extra_is_one_line_naming_it(
    trained_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "openvino", None)
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    with pytest.raises(MissingDependencyError, match=r"pip install 'sedeploy\[openvino\]'"):
        build_engine(model, BuildOptions(precision="int8", backend="openvino"))
    result = CliRunner().invoke(cli, ["build-engine", str(model), "--backend", "openvino", "--int8"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sedeploy[openvino]" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.onnx"]  # nothing built


def test_onnx_only_recipe_flags_are_refused_not_ignored(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sedeploy.errors import ConfigError

    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    with pytest.raises(ConfigError, match="calib_method shape the ONNX Q/DQ recipe"):
        build_engine(
            model,
            BuildOptions(
                precision="int8",
                backend="openvino",
                calib_dir=trained_digits.calib_dir,
                calib_method="percentile",
            ),
        )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["digits.onnx"]


def test_auto_on_a_cpu_builds_both_probes_them_and_records_the_choice(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    result = build_engine(model, BuildOptions(precision="fp32", probe_seconds=0.2))
    probe = result.probe
    assert probe is not None and result.backend == probe["winner"]
    loser = "onnxruntime" if result.backend == "openvino" else "openvino"
    assert re.search(rf"\d\.\d\dx (faster|slower) than {loser} at batch 8 \(", result.backend_reason)
    assert result.backend_reason.startswith(f"auto: {result.backend} is ")
    assert f"on this machine; using {result.backend}; TensorRT not used" in result.backend_reason
    assert "TensorRT not used" in result.backend_reason
    for backend in ("onnxruntime", "openvino"):
        assert all(probe["images_per_s"][backend][batch] > 0 for batch in ("1", "8"))
    ratio = probe["openvino_vs_onnxruntime"]
    score = math.sqrt(ratio["1"] * ratio["8"])  # the geometric mean decides, outside the tie band
    faster = "openvino" if score > 1 else "onnxruntime"
    if min(score, 1 / score) < 1 - TIE_BAND:
        assert result.backend == faster
    else:  # tied: the more faithful one, and the decision says so
        assert result.backend == faster or "more faithful" in result.backend_reason
    names = [path.name for path in result.artifacts]
    assert sorted(names) == ["digits.openvino.xml", "digits.ort.onnx"]
    assert result.artifact.name == (
        "digits.openvino.xml" if result.backend == "openvino" else "digits.ort.onnx"
    )
    for path in result.artifacts:  # both kept, both manifests carry the probe and still match their files
        manifest = read_manifest(path)
        assert manifest.build_options["backend"] == "auto"
        assert manifest.build_options["auto_probe"]["winner"] == result.backend
        with sedeploy.load(path) as runner:
            assert runner.manifest is not None


def test_auto_cli_probes_the_batch_asked_for(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    result = CliRunner().invoke(cli, ["build-engine", str(model), "--probe-batch", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["probe"]["batches"] == [4] and report["backend"] == report["probe"]["winner"]
    assert f"at batch 4 on this machine; using {report['backend']}" in report["backend_reason"]


def test_auto_with_an_onnx_only_flag_stays_on_onnxruntime(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    result = build_engine(model, BuildOptions(precision="fp32"), output=tmp_path / "fast.onnx")
    assert result.backend == "onnxruntime" and result.probe is None
    assert "OpenVINO not measured: output given (use backend openvino for an IR)" in result.backend_reason
    assert not list(tmp_path.glob("*.xml"))
