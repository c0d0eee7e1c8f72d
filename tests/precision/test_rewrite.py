"""The SE squeeze rewrite: exported zoo models pool with GlobalAveragePool, parity holds, INT8 still finds SE."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.build import BuildOptions, build_engine
from sedeploy.export import MIN_COSINE, export_onnx
from sedeploy.graphs.rewrite import se_squeeze_to_global_pool
from sedeploy.graphs.se_blocks import find_se_blocks


def _op_of(graph: onnx.GraphProto) -> dict[str, str]:
    return {node.name: node.op_type for node in graph.node}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    ort = ort_backend.onnxruntime()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_exported_zoo_model_has_no_reduce_mean_in_se_blocks_and_matches_pytorch(tmp_path: Path) -> None:
    result = export_onnx("se_resnet18", img_size=64, num_classes=10, output=tmp_path / "se18.onnx")
    assert result.parity and all(check.passed(MIN_COSINE) for check in result.parity)
    model = onnx.load(str(result.path))
    blocks = find_se_blocks(model)
    ops = _op_of(model.graph)
    assert len(blocks) == 8  # one per BasicBlock of ResNet-18
    assert [ops[block[0]] for block in blocks] == ["GlobalAveragePool"] * 8
    assert not any(ops[name] == "ReduceMean" for block in blocks for name in block)


def test_amax_squeeze_and_other_reductions_are_left_alone() -> None:
    """Only a keepdims spatial mean feeding an SE gate is rewritten; the head's mean and a max squeeze stay."""

    def se_graph(pool: onnx.NodeProto) -> onnx.ModelProto:
        weight = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
        axes = numpy_helper.from_array(np.array([-2, -1], np.int64), "axes")
        nodes = [
            pool,
            helper.make_node("Conv", ["pooled", "w"], ["fc"], name="fc"),
            helper.make_node("Sigmoid", ["fc"], ["gate"], name="gate"),
            helper.make_node("Mul", ["x", "gate"], ["scaled"], name="scale"),
            helper.make_node("ReduceMean", ["scaled", "axes"], ["y"], name="head", keepdims=0),
        ]
        graph = helper.make_graph(
            nodes,
            "se",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5, 5])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
            [weight, axes],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    mean = se_graph(helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], name="squeeze", keepdims=1))
    before = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    expected = _run(mean, before)
    assert se_squeeze_to_global_pool(mean) == 1
    assert _op_of(mean.graph) == {
        "squeeze": "GlobalAveragePool",
        "fc": "Conv",
        "gate": "Sigmoid",
        "scale": "Mul",
        "head": "ReduceMean",
    }
    assert [init.name for init in mean.graph.initializer] == ["w", "axes"]  # the head still reads the axes
    onnx.checker.check_model(mean, full_check=True)
    np.testing.assert_allclose(_run(mean, before), expected, rtol=1e-5, atol=1e-6)

    maximum = se_graph(helper.make_node("ReduceMax", ["x", "axes"], ["pooled"], name="squeeze", keepdims=1))
    assert se_squeeze_to_global_pool(maximum) == 0
    assert _op_of(maximum.graph)["squeeze"] == "ReduceMax"


def test_int8_keeps_the_se_gate_in_float_and_a_quantized_se_pool_fuses(  # type: ignore[no-untyped-def]
    trained_digits, tmp_path: Path
) -> None:
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    blocks = find_se_blocks(onnx.load(str(model)))
    assert len(blocks) == 3
    trt = build_engine(
        model,
        BuildOptions(
            precision="int8", backend="onnxruntime", target="tensorrt", calib_dir=trained_digits.calib_dir
        ),
    )
    graph = onnx.load(str(trt.artifact)).graph
    producers = {output: node for node in graph.node for output in node.output}
    gates = [node for node in graph.node if node.name in {block[-2] for block in blocks}]
    assert len(gates) == 3 and all(producers[g.input[0]].op_type == "Conv" for g in gates)  # gate in float

    cpu = build_engine(
        model,
        BuildOptions(
            precision="int8",
            backend="onnxruntime",
            target="cpu",
            calib_dir=trained_digits.calib_dir,
            quantize_se=True,
        ),
    )
    ops = [node.op_type for node in onnx.load(str(cpu.artifacts[-1])).graph.node]
    assert (
        ops.count("QLinearGlobalAveragePool") == 3
    )  # with the SE quantized, the squeezes run as INT8 pooling
    assert ops.count("ReduceMean") == 1  # the classifier head's pool, not an SE block's


def test_weights_used_only_inside_subgraphs_are_kept() -> None:
    weight = numpy_helper.from_array(np.full((1, 3), 2.0, dtype=np.float32), "w")
    branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [1, 3])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [1, 3])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert se_squeeze_to_global_pool(model) == 0
    assert [init.name for init in model.graph.initializer] == ["w"]
    session = ort_backend.onnxruntime().InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = np.ones((1, 3), np.float32)
    assert np.allclose(session.run(None, {"x": x, "flag": np.array(True)})[0], 2 * x)
