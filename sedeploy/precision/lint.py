"""A lint against TensorRT's rules for explicitly quantized (Q/DQ) ONNX graphs, run on every TensorRT-flavour write."""

from __future__ import annotations

import logging

import numpy as np
import onnx

logger = logging.getLogger(__name__)


def lint_tensorrt_qdq(model: onnx.ModelProto) -> list[str]:
    """Problems that stop TensorRT from running ``model`` as an explicitly quantized INT8 network.

    Rules: opset >= 13; INT8 only (no UINT8 or other quantized types); every
    zero-point 0; per-channel conv weight scales on axis 0 with one scale per
    output channel; no INT32 (bias) Q/DQ; no Q/DQ left dangling (every
    QuantizeLinear feeds only DequantizeLinear, every DequantizeLinear reads a
    QuantizeLinear or a constant and feeds something).
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
    return problems
