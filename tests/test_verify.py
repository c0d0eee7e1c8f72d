"""sedeploy verify: passes good artifacts, fails a broken one naming the figure, reports accuracies and NaN inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from digits import TrainedDigits
from onnx import numpy_helper

from sedeploy.artifacts.precision import detect_precision
from sedeploy.build import BuildOptions, build_engine
from sedeploy.cli import cli
from sedeploy.verify import DEFAULT_THRESHOLDS, find_reference, verify


@pytest.fixture(scope="module")
def int8_artifacts(
    trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The digits model's CPU INT8 artifacts (beside the FP32 ONNX) and a copy with activation scales x100."""
    options = BuildOptions(
        precision="int8", backend="onnxruntime", target="cpu", calib_dir=trained_digits.calib_dir
    )
    result = build_engine(trained_digits.onnx_path, options)
    int8_path = result.artifacts[0]
    model = onnx.load(str(int8_path))
    initializers = {init.name: init for init in model.graph.initializer}
    scaled = set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        scale_name = node.input[1]
        if scale_name in initializers and scale_name not in scaled:
            scale = initializers[scale_name]
            original = numpy_helper.to_array(scale)
            # np.asarray: numpy 1.x turns a 0-d array times a number into a scalar of another dtype
            scale.CopyFrom(
                numpy_helper.from_array(np.asarray(original * 100, dtype=original.dtype), scale_name)
            )
            scaled.add(scale_name)
    assert scaled, "the INT8 file has no activation scales to break"
    broken = tmp_path_factory.mktemp("broken") / "digits.int8-broken.onnx"
    onnx.save(model, str(broken))
    return {"int8": int8_path, "optimized": result.artifacts[1], "broken": broken}


def test_verify_passes_good_artifacts_against_the_fp32_source(
    int8_artifacts: dict[str, Path], trained_digits: TrainedDigits
) -> None:
    assert find_reference(int8_artifacts["optimized"]) == trained_digits.onnx_path
    report = verify(int8_artifacts["optimized"])
    assert report.passed, report.to_text()
    assert report.precision == "int8" and report.thresholds == DEFAULT_THRESHOLDS["int8"]
    assert report.inputs.startswith("synthetic") and report.samples == 64 and report.top1_gate == "not gated"
    assert report.comparison.max_abs_error > 0 and report.mean_abs_error <= report.comparison.max_abs_error
    assert report.top5_agreement == 1.0


def test_verify_data_reports_both_accuracies_and_the_drop(
    int8_artifacts: dict[str, Path], trained_digits: TrainedDigits
) -> None:
    report = verify(int8_artifacts["int8"], data=trained_digits.test_dir)
    assert report.samples == len(trained_digits.test_labels)
    assert report.reference_accuracy == pytest.approx(
        float(np.mean(report_logits_argmax(trained_digits) == trained_digits.test_labels))
    )
    assert report.reference_accuracy is not None and report.artifact_accuracy is not None
    assert report.accuracy_drop is not None
    assert report.accuracy_drop == pytest.approx(100 * (report.reference_accuracy - report.artifact_accuracy))
    assert report.reference_accuracy > 0.9 and report.passed, report.to_text()
    text = report.to_text()
    assert "accuracy, reference" in text and "accuracy, artifact" in text and "accuracy drop" in text


def report_logits_argmax(trained_digits: TrainedDigits) -> np.ndarray:
    """The FP32 ONNX's own top-1 on the test set, computed independently of verify."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(trained_digits.onnx_path), providers=["CPUExecutionProvider"])
    return np.argmax(session.run(None, {"input": trained_digits.test_images})[0], axis=1)


def test_verify_fails_a_broken_int8_file_naming_the_figure(
    int8_artifacts: dict[str, Path], trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    broken = int8_artifacts["broken"]
    assert detect_precision(broken) == "int8"  # no manifest: read from the graph
    report_path = tmp_path / "report.json"
    args = [
        "verify",
        str(broken),
        "--reference",
        str(trained_digits.onnx_path),
        "--data",
        str(trained_digits.test_dir),
    ]
    result = CliRunner().invoke(cli, [*args, "--json", str(report_path)])
    assert result.exit_code == 1, result.output
    assert "FAIL: cosine min" in result.output and "accuracy drop" in result.output
    report = json.loads(report_path.read_text())
    assert report["passed"] is False
    assert any(failure.startswith("cosine min") for failure in report["failures"])
    assert report["comparison"]["min_cosine"] < DEFAULT_THRESHOLDS["int8"].min_cosine


def test_verify_cli_exit_codes_and_threshold_overrides(
    int8_artifacts: dict[str, Path], trained_digits: TrainedDigits
) -> None:
    runner = CliRunner()
    good = runner.invoke(cli, ["verify", str(int8_artifacts["int8"]), "--num", "16", "--json", "-"])
    assert good.exit_code == 0, good.output
    assert json.loads(good.output)["passed"] is True
    strict = runner.invoke(cli, ["verify", str(int8_artifacts["int8"]), "--num", "16", "--min-cos", "1"])
    assert strict.exit_code == 1 and "cosine min" in strict.output
    no_reference = runner.invoke(cli, ["verify", str(int8_artifacts["broken"])])
    assert no_reference.exit_code == 2 and "give --reference" in no_reference.output
    bad_option = runner.invoke(cli, ["verify", str(int8_artifacts["int8"]), "--min-cos", "2"])
    assert bad_option.exit_code == 2


def test_verify_reports_nan_inputs_and_leaves_them_out(
    int8_artifacts: dict[str, Path], trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    inputs = trained_digits.test_images[:20].copy()
    inputs[3, 0, 0, 0] = np.nan
    inputs[7, 0, 1, 1] = np.inf
    data = tmp_path / "inputs.npy"
    np.save(data, inputs)
    report = verify(int8_artifacts["int8"], data=data)
    assert report.nonfinite_inputs == 2 and report.samples == 18
    assert report.passed and report.comparison.finite
    assert "2 input(s) held NaN or infinity" in report.to_text()
    assert report.to_dict()["nonfinite_inputs"] == 2
