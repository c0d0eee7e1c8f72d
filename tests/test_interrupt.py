"""Interruption safety: SIGINT/SIGTERM during export, calibration and build leave no partial artifact or temp file.

Each test runs the real ``sedeploy`` command in a subprocess, waits until its
temporary file appears in the output folder, signals it, and checks the exit
code, the one-line message, that no temporary file is left and that the earlier
artifacts are byte-identical. Calibration and the final publish of a build are
held open with the documented test-only hook ``SEDEPLOY_TEST_DELAY_<STAGE>``
(:func:`sedeploy.files.pause_for_tests`); export is slow enough without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from digits import cpu_int8_options

from sedeploy.build import build_engine
from sedeploy.files import sha256_of_file
from sedeploy.precision import DEFAULT_CALIBRATION_METHOD

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
WAIT_SECONDS = 180  # the first sign of life includes importing torch on a busy machine


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with its sha256."""
    return {
        str(path.relative_to(folder)): sha256_of_file(path) for path in folder.rglob("*") if path.is_file()
    }


def _leftovers(folder: Path) -> list[str]:
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.name.endswith(".tmp")
        or path.name.startswith(".sedeploy-stage-")
        or ".sedeploy-ir-" in path.name
    )


def _restore_sigint() -> None:
    # A job started in the background of a non-interactive shell (as CI may run pytest) inherits SIGINT
    # ignored, and Python then keeps it ignored; the command under test must see the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(
    arguments: list[str],
    folder: Path,
    temp_glob: str,
    signum: signal.Signals,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``sedeploy ARGUMENTS``, send ``signum`` once ``temp_glob`` matches in ``folder``, return the result."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sedeploy", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=_restore_sigint,
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not list(folder.glob(temp_glob)):
            if process.poll() is not None:
                pytest.fail(f"sedeploy finished before its temporary file appeared:\n{process.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail(f"no {temp_glob} appeared in {folder} within {WAIT_SECONDS} s")
            time.sleep(0.005)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _assert_interrupted(result: subprocess.CompletedProcess[str], signum: signal.Signals) -> None:
    assert result.returncode == EXIT_CODES[signum], result.stderr
    assert f"error: interrupted by {signum.name}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])  # SIGINT: see the publish test
def test_interrupted_export_keeps_the_previous_model(
    trained_digits, tmp_path: Path, signum: signal.Signals
) -> None:  # type: ignore[no-untyped-def]
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    shutil.copy(trained_digits.onnx_path, output)
    before = _snapshot(output.parent)
    arguments = ["export", "se_resnet18", "--img-size", "64", "--num-classes", "10", "-o", str(output)]
    result = _interrupt(arguments, output.parent, ".model.onnx.*.tmp", signum)
    _assert_interrupted(result, signum)
    assert _leftovers(output.parent) == []
    assert _snapshot(output.parent) == before


@pytest.fixture
def previous_int8_build(trained_digits, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A model folder holding a complete earlier INT8 build: artifacts, manifests and calibration cache."""
    model = tmp_path / "model" / "digits.onnx"
    model.parent.mkdir()
    shutil.copy(trained_digits.onnx_path, model)
    build_engine(model, cpu_int8_options(trained_digits.calib_dir, calib_size=32))
    return model


def test_interrupted_calibration_keeps_the_previous_build_and_cache(
    previous_int8_build: Path, trained_digits
) -> None:  # type: ignore[no-untyped-def]
    model = previous_int8_build
    before = _snapshot(model.parent)
    assert any(name.endswith(f".calibration.{DEFAULT_CALIBRATION_METHOD}.asymmetric.json") for name in before)
    arguments = [
        "build-engine", str(model), "--int8", "--backend", "onnxruntime", "--target", "cpu",
        "--calib-dir", str(trained_digits.calib_dir), "--calib-size", "32", "--recalibrate",
    ]  # fmt: skip
    env = {"SEDEPLOY_TEST_DELAY_CALIBRATE": "60"}
    result = _interrupt(arguments, model.parent, ".digits.int8-cpu.onnx.*.tmp", signal.SIGTERM, env)
    _assert_interrupted(result, signal.SIGTERM)
    assert _leftovers(model.parent) == []
    assert _snapshot(model.parent) == before


def test_interrupted_publish_keeps_the_previous_artifact_and_manifest(
    previous_int8_build: Path, trained_digits
) -> None:  # type: ignore[no-untyped-def]
    """Signalled with every file staged, just before the renames: nothing of the new build appears."""
    model = previous_int8_build
    before = _snapshot(model.parent)
    arguments = [
        "build-engine", str(model), "--int8", "--backend", "onnxruntime", "--target", "cpu",
        "--calib-dir", str(trained_digits.calib_dir), "--calib-size", "32", "--seed", "1",
    ]  # fmt: skip
    env = {"SEDEPLOY_TEST_DELAY_PUBLISH": "60"}
    result = _interrupt(arguments, model.parent, ".digits.int8-cpu.ort.onnx.*.tmp", signal.SIGINT, env)
    _assert_interrupted(result, signal.SIGINT)
    assert _leftovers(model.parent) == []
    after = _snapshot(model.parent)
    artifacts = [name for name in before if name.endswith((".onnx", ".manifest.json"))]
    assert {name: after[name] for name in artifacts} == {name: before[name] for name in artifacts}
