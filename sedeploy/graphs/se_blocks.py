"""Finding Squeeze-and-Excitation blocks in an ONNX graph: pool -> small FCs -> gate -> Mul with the input.

The graph-level SE search, shared by the export rewrites and the precision recipes (which keep the SE path in
float or quantize it), so both agree on what an SE block is.
"""

from __future__ import annotations

import onnx

SE_GATES = ("Sigmoid", "HardSigmoid", "Tanh", "Relu", "Clip")
SE_POOLS = ("ReduceMean", "ReduceMax", "GlobalAveragePool", "GlobalMaxPool")
_SE_PATH_OPS = ("Conv", "Gemm", "MatMul", "Relu", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Add")


def graph_with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    return model


def find_se_blocks(model: onnx.ModelProto) -> list[list[str]]:
    """Node names of every SE block: ``Mul(x, gate(... pool(x)))`` where the gate's path leads back to a pool of x.

    Each block lists its pooling, excitation (FC/conv, activation, reshape) and
    gate nodes and the scaling Mul, so they can be kept in float.
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    blocks = []
    for node in model.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for gate_input, scaled_input in (node.input, node.input[::-1]):
            gate = producers.get(gate_input)
            if gate is None or gate.op_type not in SE_GATES:
                continue
            path = _path_to_pool(gate, scaled_input, producers)
            if path is not None:
                blocks.append([*path, node.name])
                break
    return blocks


def _path_to_pool(
    gate: onnx.NodeProto, pooled: str, producers: dict[str, onnx.NodeProto]
) -> list[str] | None:
    path = [gate.name]
    current = producers.get(gate.input[0]) if gate.input else None
    for _ in range(12):
        if current is None:
            return None
        path.append(current.name)
        if current.op_type in SE_POOLS:
            return path[::-1] if current.input[0] == pooled else None
        if current.op_type not in _SE_PATH_OPS:
            return None
        current = producers.get(current.input[0])
    return None
