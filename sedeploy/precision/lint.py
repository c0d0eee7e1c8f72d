"""A lint against TensorRT's rules for explicitly quantized (Q/DQ) ONNX graphs, run on every TensorRT-flavour write."""

from __future__ import annotations

import logging

import numpy as np
import onnx

logger = logging.getLogger(__name__)


def lint_tensorrt_qdq(model: onnx.ModelProto, high_precision: str | None = None) -> list[str]:
    """Problems that stop TensorRT from running ``model`` as an explicitly quantized INT8 network.

    Rules: opset >= 13; INT8 only (no UINT8 or other quantized types); every
    zero-point 0; per-channel conv weight scales on axis 0 with one scale per
    output channel; no INT32 (bias) Q/DQ; no Q/DQ left dangling (every
    QuantizeLinear feeds only DequantizeLinear, every DequantizeLinear reads a
    QuantizeLinear or a constant and feeds something). Placement (ModelOpt's, which
    TensorRT fuses): a Conv with INT8 weights reads an INT8 input; an Add fed by a
    Conv leaves that convolution-side input float when its residual input is
    quantized, so TensorRT fuses the add into the convolution. With
    ``high_precision="fp16"``: no FP32 tensor besides the graph inputs and outputs
    (a strongly typed FP16+INT8 graph), and FP16 Q/DQ only from opset 19.
    """
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        problems.append(f"opset {opset} is below 13 (per-channel Q/DQ needs 13)")
    initializers = {init.name: init for init in model.graph.initializer}
    constants = {
        node.output[0]: next((a.t for a in node.attribute if a.name == "value"), None)
        for node in model.graph.node
        if node.op_type == "Constant"
    }
    producers = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in model.graph.output}

    def constant(name: str) -> np.ndarray | None:
        if name in initializers:
            return onnx.numpy_helper.to_array(initializers[name])
        tensor = constants.get(name)
        return onnx.numpy_helper.to_array(tensor) if tensor is not None else None

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]}"
        zero_point = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "QuantizeLinear":
            if zero_point is None:
                problems.append(f"{label} has no zero-point, so it quantizes to UINT8")
            elif zero_point.dtype != np.int8:
                problems.append(f"{label} quantizes to {zero_point.dtype}, not int8")
            users = consumers.get(node.output[0], [])
            if not users and node.output[0] not in graph_outputs:
                problems.append(f"{label} is dangling (its output is unused)")
            elif any(user.op_type != "DequantizeLinear" for user in users):
                problems.append(f"{label} feeds a node other than DequantizeLinear")
        else:
            source = constant(node.input[0])
            if source is not None and source.dtype == np.int32:
                problems.append(f"{label} dequantizes an INT32 tensor (bias quantization)")
            elif source is not None and source.dtype != np.int8:
                problems.append(f"{label} dequantizes {source.dtype}, not int8")
            elif source is None and (
                producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "QuantizeLinear"
            ):
                problems.append(f"{label} reads neither a QuantizeLinear nor a constant")
            if (
                zero_point is not None
                and zero_point.dtype not in (np.int8,)
                and source is not None
                and source.dtype != np.int32
            ):
                problems.append(f"{label} has a {zero_point.dtype} zero-point, not int8")
            if not consumers.get(node.output[0]) and node.output[0] not in graph_outputs:
                problems.append(f"{label} is dangling (its output is unused)")
            for user in consumers.get(node.output[0], []):
                if (
                    user.op_type == "Conv"
                    and len(user.input) > 1
                    and user.input[1] == node.output[0]
                    and source is not None
                ):
                    scale = constant(node.input[1])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                    channels = source.shape[0]
                    if scale is None or scale.size != channels or (scale.size > 1 and axis != 0):
                        problems.append(
                            f"{label} gives conv {user.name} weight scales of size "
                            f"{None if scale is None else scale.size} on axis {axis}; want {channels} on axis 0"
                        )
        if zero_point is not None and np.any(zero_point != 0):
            problems.append(f"{label} has a non-zero zero-point")
        scale = constant(node.input[1]) if len(node.input) > 1 else None
        if scale is not None and scale.dtype == np.float16 and opset < 19:
            problems.append(f"{label} has an FP16 scale below opset 19")
    problems += _placement_problems(model, producers)
    if high_precision == "fp16":
        problems += _fp32_tensors(model)
    return problems


def _dequantized_source(name: str, producers: dict[str, onnx.NodeProto]) -> str | None:
    """The float tensor behind a Q->DQ pair feeding ``name``, or None when ``name`` is not such a pair's output."""
    dequantize = producers.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    quantize = producers.get(dequantize.input[0])
    return str(quantize.input[0]) if quantize is not None and quantize.op_type == "QuantizeLinear" else None


def _placement_problems(model: onnx.ModelProto, producers: dict[str, onnx.NodeProto]) -> list[str]:
    problems = []
    initializers = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        label = f"{node.op_type} {node.name or node.output[0]}"
        if node.op_type == "Conv" and len(node.input) > 1:
            weight = producers.get(node.input[1])
            weight_quantized = weight is not None and weight.op_type == "DequantizeLinear"
            data = producers.get(node.input[0])
            data_quantized = data is not None and data.op_type == "DequantizeLinear"
            if weight_quantized and not data_quantized and node.input[0] not in initializers:
                problems.append(f"{label} has INT8 weights but a float input, so TensorRT runs it in float")
        if node.op_type == "Add" and len(node.input) == 2:
            sources = [_dequantized_source(name, producers) for name in node.input]
            known = [source for source in sources if source is not None]
            if len(known) < 2:
                continue
            if any(source in producers and producers[source].op_type == "Conv" for source in known):
                problems.append(
                    f"{label} quantizes its convolution-side input too; leave it float so TensorRT fuses the add "
                    "into that convolution"
                )
    return problems


def _fp32_tensors(model: onnx.ModelProto) -> list[str]:
    """FP32 tensors of an FP16-typed graph besides its inputs and outputs (and the casts at those edges)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        info.name: info.type.tensor_type.elem_type
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if info.type.HasField("tensor_type")
    }
    edges = {info.name for info in [*model.graph.input, *model.graph.output]}
    problems = []
    for node in model.graph.node:
        for output in node.output:
            if output in edges or types.get(output) != onnx.TensorProto.FLOAT:
                continue
            problems.append(
                f"{node.op_type} {node.name or output} writes FP32 tensor {output} in an FP16-typed graph"
            )
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            problems.append(f"initializer {init.name} is FP32 in an FP16-typed graph")
    return problems
