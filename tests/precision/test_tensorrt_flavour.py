"""The tensorrt INT8 flavour as NVIDIA's ModelOpt builds it: FP16-typed float layers, its Q/DQ placement, the lint."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sedeploy.artifacts.manifest import read_manifest
from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.backends.audit import audit
from sedeploy.build import BuildOptions, build_engine
from sedeploy.compare import compare_logits
from sedeploy.data import load_image_set, preprocessing_for
from sedeploy.errors import ConfigError
from sedeploy.precision import (
    Int8Recipe,
    calibrate,
    fidelity_optimization_level,
    lint_tensorrt_qdq,
    quantize_int8,
)
from sedeploy.verify import verify


@pytest.fixture(scope="module")
def tensorrt_build(trained_digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The digits model's tensorrt-flavour INT8 ONNX as build-engine writes it (defaults: entropy, FP16 float layers)."""
    model = tmp_path_factory.mktemp("trt") / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    options = BuildOptions(
        precision="int8", backend="onnxruntime", target="tensorrt", calib_dir=trained_digits.calib_dir
    )
    return build_engine(model, options).artifact


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {
        info.name: info.type.tensor_type.elem_type
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


def test_float_layers_are_fp16_typed_with_fp32_graph_inputs_and_outputs(tensorrt_build: Path) -> None:
    model = onnx.load(str(tensorrt_build))
    types = _types(model)
    edges = {info.name for info in [*model.graph.input, *model.graph.output]}
    assert all(types[name] == TensorProto.FLOAT for name in edges)
    fp32_inside = [
        name
        for node in model.graph.node
        for name in node.output
        if name not in edges and types.get(name) == TensorProto.FLOAT
    ]
    assert fp32_inside == []
    assert not any(init.data_type == TensorProto.FLOAT for init in model.graph.initializer)
    compute = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    assert compute and all(types[node.output[0]] == TensorProto.FLOAT16 for node in compute)
    assert lint_tensorrt_qdq(model, high_precision="fp16") == []
    recipe = read_manifest(tensorrt_build).recipe
    assert recipe["high_precision"] == "fp16" and recipe["float_layers_typed"] == "fp16"


def test_placement_follows_modelopt_on_the_se_resnet(tensorrt_build: Path) -> None:
    model = onnx.load(str(tensorrt_build))
    producers = _producers(model)

    def dequantized(name: str) -> bool:
        return name in producers and producers[name].op_type == "DequantizeLinear"

    adds = [node for node in model.graph.node if node.op_type == "Add"]
    assert len(adds) == 3  # the three projection-shortcut residual adds
    for add in adds:
        conv_side = [name for name in add.input if producers[name].op_type == "Conv"]
        assert len(conv_side) == 1, "the convolution-side input stays float, for TensorRT's add fusion"
        assert sum(dequantized(name) for name in add.input) == 1, "the residual side is quantized"
    pool = next(node for node in model.graph.node if node.op_type == "MaxPool")
    assert dequantized(pool.input[0])
    head = next(node for node in model.graph.node if node.op_type == "Gemm")
    assert not any(dequantized(name) for name in head.input), "the classifier head stays in float"
    assert not any(
        dequantized(name) for node in model.graph.node if node.op_type == "Mul" for name in node.input
    )
    recipe = read_manifest(tensorrt_build).recipe
    assert sorted(recipe["adds_fused_into_convolution"]) == sorted(add.name for add in adds)
    assert "classifier head" in recipe["left_in_float"]


def test_the_fp16_typed_graph_passes_verify_with_the_int8_thresholds(
    trained_digits, tensorrt_build: Path
) -> None:  # type: ignore[no-untyped-def]
    report = verify(tensorrt_build, data=trained_digits.test_dir)
    print(report)
    assert report.passed, report.failures


def test_high_precision_fp32_gives_the_fp32_typing(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    preprocessing, channels = preprocessing_for(model)
    images = load_image_set(trained_digits.calib_dir, preprocessing, channels).images
    recipe = Int8Recipe(flavour="tensorrt", method="minmax", high_precision="fp32")
    ranges = calibrate(model, images, "input", recipe, "d")
    output = tmp_path / "digits.int8-tensorrt.onnx"
    built = quantize_int8(model, output, ranges, recipe)
    graph = onnx.load(str(output))
    assert built["high_precision"] == "fp32"
    assert not any(init.data_type == TensorProto.FLOAT16 for init in graph.graph.initializer)
    types = _types(graph)
    assert all(
        types[node.output[0]] == TensorProto.FLOAT for node in graph.graph.node if node.op_type == "Conv"
    )
    assert lint_tensorrt_qdq(graph) == []
    # The FP16 rule sees the FP32 typing.
    assert any("writes FP32 tensor" in problem for problem in lint_tensorrt_qdq(graph, high_precision="fp16"))
    fp32 = ort_backend.create_session(model, ["CPUExecutionProvider"]).run(None, {"input": images})[0]
    int8 = ort_backend.create_session(output, ["CPUExecutionProvider"]).run(None, {"input": images})[0]
    assert compare_logits(fp32, int8).min_cosine >= 0.98


def test_the_cpu_flavour_refuses_fp16_float_layers() -> None:
    with pytest.raises(ConfigError, match="high_precision='fp16' goes with the tensorrt flavour"):
        Int8Recipe(flavour="cpu", high_precision="fp16")
    assert Int8Recipe(flavour="cpu").float_type == "fp32"
    assert Int8Recipe(flavour="tensorrt").float_type == "fp16"


def test_fidelity_is_checked_at_the_graphs_own_numerics_for_tensorrt(tensorrt_build: Path) -> None:
    recipe = read_manifest(tensorrt_build).recipe
    assert fidelity_optimization_level(recipe) == "disable"
    assert fidelity_optimization_level({"flavour": "cpu"}) == "all"


def test_onnxruntime_runs_the_tensorrt_flavour_in_float_and_the_audit_says_so(tensorrt_build: Path) -> None:
    report = audit(tensorrt_build)
    print(report.to_text())
    assert (
        report.share_of("int8") == 0.0
    )  # ONNX Runtime's CPU kernels neither fuse signed Q/DQ here nor run FP16


def _residual_add_graph(quantize_conv_side: bool) -> onnx.ModelProto:
    """x -> Conv -> (Q/DQ?) -> Add <- Q/DQ <- x: the projection-shortcut add, with or without the conv side quantized."""
    initializers = [
        numpy_helper.from_array(np.array(0.05, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "z"),
        numpy_helper.from_array(np.ones((3, 3, 1, 1), dtype=np.int8), "w_q"),
        numpy_helper.from_array(np.full(3, 0.1, dtype=np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(3, dtype=np.int8), "w_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["c"], name="conv"),
    ]
    conv_side = "c"
    if quantize_conv_side:
        nodes += [
            helper.make_node("QuantizeLinear", ["c", "s", "z"], ["c_q"], name="q_c"),
            helper.make_node("DequantizeLinear", ["c_q", "s", "z"], ["c_dq"], name="dq_c"),
        ]
        conv_side = "c_dq"
    nodes.append(helper.make_node("Add", [conv_side, "x_dq"], ["y"], name="add"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_lint_learns_the_residual_add_rule() -> None:
    assert lint_tensorrt_qdq(_residual_add_graph(quantize_conv_side=False)) == []
    problems = lint_tensorrt_qdq(_residual_add_graph(quantize_conv_side=True))
    assert any("quantizes its convolution-side input" in problem for problem in problems), problems


def test_lint_learns_the_fp16_qdq_opset_rule(tensorrt_build: Path) -> None:
    model = onnx.load(str(tensorrt_build))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            assert opset.version >= 19
            opset.version = 18
    assert any("FP16 scale below opset 19" in problem for problem in lint_tensorrt_qdq(model))


def test_lint_catches_a_conv_with_int8_weights_and_a_float_input() -> None:
    model = _residual_add_graph(quantize_conv_side=False)
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    conv.input[0] = "x"
    problems = lint_tensorrt_qdq(model)
    assert any("INT8 weights but a float input" in problem for problem in problems), problems
