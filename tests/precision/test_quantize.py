"""Precision ONNX on a small trained model: FP16 and INT8 (both flavours, every calibration method) fidelity, the lint."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sedeploy.artifacts.metadata import read_metadata
from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.build import BuildOptions, build_engine
from sedeploy.compare import compare_logits, top1_accuracy
from sedeploy.graphs.se_blocks import find_se_blocks
from sedeploy.precision import CALIBRATION_METHODS, FLAVOURS, lint_tensorrt_qdq


def _logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort_backend.create_session(path, ["CPUExecutionProvider"])
    return session.run(None, {"input": images})[0]


@pytest.fixture(scope="module")
def fp32_logits(trained_digits) -> np.ndarray:  # type: ignore[no-untyped-def]
    return _logits(trained_digits.onnx_path, trained_digits.test_images)


def _workdir(trained_digits, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    return model


def test_the_fixture_model_is_really_trained(trained_digits, fp32_logits) -> None:  # type: ignore[no-untyped-def]
    accuracy = top1_accuracy(fp32_logits, trained_digits.test_labels)
    print(f"FP32 test accuracy {accuracy:.4f} (PyTorch {trained_digits.torch_accuracy:.4f})")
    assert accuracy >= 0.9
    assert accuracy == pytest.approx(trained_digits.torch_accuracy, abs=0.005)


def test_fp16_fidelity(trained_digits, fp32_logits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _workdir(trained_digits, tmp_path)
    result = build_engine(model, BuildOptions(precision="fp16", backend="onnxruntime"))
    fp16_path = result.artifact
    assert fp16_path.name == "digits.fp16.onnx"
    graph = onnx.load(str(fp16_path))
    assert any(init.data_type == TensorProto.FLOAT16 for init in graph.graph.initializer)
    assert graph.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # callers do not change
    comparison = compare_logits(fp32_logits, _logits(fp16_path, trained_digits.test_images))
    print(f"FP16 vs FP32: {comparison.to_text()}")
    assert comparison.top1_agreement >= 0.999
    assert comparison.mean_cosine >= 0.9999
    assert read_metadata(fp16_path).arch == "se_preact_resnet"  # metadata travels with the precision file


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_int8_fidelity(trained_digits, fp32_logits, tmp_path: Path, flavour: str, method: str) -> None:  # type: ignore[no-untyped-def]
    model = _workdir(trained_digits, tmp_path)
    options = BuildOptions(
        precision="int8",
        backend="onnxruntime",
        target=flavour,
        calib_method=method,
        calib_dir=trained_digits.calib_dir,
    )
    result = build_engine(model, options)
    int8_path = result.artifact
    assert int8_path.name == f"digits.int8-{flavour}.onnx"
    int8_logits = _logits(int8_path, trained_digits.test_images)
    fp32_accuracy = top1_accuracy(fp32_logits, trained_digits.test_labels)
    int8_accuracy = top1_accuracy(int8_logits, trained_digits.test_labels)
    comparison = compare_logits(fp32_logits, int8_logits)
    print(
        f"INT8 {flavour}/{method}: accuracy {int8_accuracy:.4f} vs FP32 {fp32_accuracy:.4f} "
        f"(drop {100 * (fp32_accuracy - int8_accuracy):.2f} points), {comparison.to_text()}"
    )
    assert fp32_accuracy - int8_accuracy <= 0.005
    assert comparison.mean_cosine >= 0.99
    graph = onnx.load(str(int8_path))
    assert sum(node.op_type == "QuantizeLinear" for node in graph.graph.node) > 0
    if flavour == "tensorrt":
        assert lint_tensorrt_qdq(graph) == []
    else:
        # CPU flavour: unsigned activations, which is exactly what TensorRT would refuse.
        assert any("uint8" in problem for problem in lint_tensorrt_qdq(graph))


def test_se_path_stays_float_unless_asked(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _workdir(trained_digits, tmp_path)
    se_blocks = find_se_blocks(onnx.load(str(model)))
    assert len(se_blocks) == 3
    assert all(block[0].startswith("node_mean") and "sigmoid" in block[-2] for block in se_blocks)
    default = build_engine(
        model,
        BuildOptions(
            precision="int8", backend="onnxruntime", target="tensorrt", calib_dir=trained_digits.calib_dir
        ),
    )
    quantized_se = build_engine(
        model,
        BuildOptions(
            precision="int8",
            backend="onnxruntime",
            target="tensorrt",
            calib_dir=trained_digits.calib_dir,
            quantize_se=True,
        ),
        output=tmp_path / "se.onnx",
    )

    def dequantized_inputs(path: Path) -> set[str]:
        graph = onnx.load(str(path)).graph
        producers = {out: node for node in graph.node for out in node.output}
        return {
            node.op_type
            for node in graph.node
            if any(
                producers.get(name) is not None and producers[name].op_type == "DequantizeLinear"
                for name in node.input
            )
        }

    assert "Mul" not in dequantized_inputs(default.artifact)
    assert "Mul" in dequantized_inputs(quantized_se.artifact)
    assert lint_tensorrt_qdq(onnx.load(str(quantized_se.artifact))) == []
    assert default.manifests[0].recipe["left_in_float"].startswith("SE excitation path")


def _qdq_graph(
    zero_point_dtype: np.dtype = np.int8,
    zero_point: int = 0,
    weight_axis: int = 0,
    per_channel: bool = True,
    bias_int32: bool = False,
    dangling: bool = False,
    opset: int = 17,
) -> onnx.ModelProto:
    """A one-conv Q/DQ graph, correct by default; each argument breaks one TensorRT rule."""
    weight = np.ones((4, 3, 3, 3), dtype=np.int8)
    scales = np.full(4 if per_channel else 1, 0.1, dtype=np.float32)
    initializers = [
        numpy_helper.from_array(np.array(0.05, dtype=np.float32), "x_scale"),
        numpy_helper.from_array(np.array(zero_point, dtype=zero_point_dtype), "x_zero"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(scales if per_channel else scales.reshape(()), "w_scale"),
        numpy_helper.from_array(np.zeros(scales.shape if per_channel else (), dtype=np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dq_x"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w", axis=weight_axis
        ),
    ]
    conv_inputs = ["x_dq", "w"]
    if bias_int32:
        initializers += [
            numpy_helper.from_array(np.zeros(4, dtype=np.int32), "b_q"),
            numpy_helper.from_array(np.full(4, 0.005, dtype=np.float32), "b_scale"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], name="dq_b"))
        conv_inputs.append("b")
    nodes.append(helper.make_node("Conv", conv_inputs, ["y"], name="conv", pads=[1, 1, 1, 1]))
    if dangling:
        nodes.append(
            helper.make_node("QuantizeLinear", ["y", "x_scale", "x_zero"], ["unused"], name="q_dangling")
        )
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_lint_accepts_a_correct_graph_that_onnxruntime_runs() -> None:
    model = _qdq_graph()
    assert lint_tensorrt_qdq(model) == []
    session = ort_backend.onnxruntime().InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    assert session.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})[0].shape == (1, 4, 8, 8)


@pytest.mark.parametrize(
    "broken,fragment",
    [
        ({"zero_point_dtype": np.uint8}, "quantizes to uint8, not int8"),
        ({"zero_point": 3}, "non-zero zero-point"),
        ({"weight_axis": 1}, "on axis 1; want 4 on axis 0"),
        ({"per_channel": False}, "weight scales of size 1"),
        ({"bias_int32": True}, "INT32 tensor (bias quantization)"),
        ({"dangling": True}, "dangling"),
        ({"opset": 12}, "opset 12 is below 13"),
    ],
)
def test_lint_catches_each_rule(broken: dict, fragment: str) -> None:
    problems = lint_tensorrt_qdq(_qdq_graph(**broken))
    assert any(fragment in problem for problem in problems), problems
