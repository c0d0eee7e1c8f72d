"""Graph rewrites applied to an exported ONNX before it is validated and parity-checked.

``se_squeeze_to_global_pool``: PyTorch exports an SE block's squeeze
(``AdaptiveAvgPool2d(1)`` or ``x.mean((2, 3), keepdim=True)``) as ``ReduceMean``
over the spatial axes. The same value as ``GlobalAveragePool`` lets ONNX Runtime
fuse it into an INT8 pooling op after quantization (instead of running it in float
behind unfused DequantizeLinear nodes, about 30% of INT8 time at batch 1, see
FACTS.md), and TensorRT and OpenVINO read both forms.
"""

from __future__ import annotations

import logging

import onnx
from onnx import numpy_helper

from sedeploy.graphs.se_blocks import find_se_blocks

logger = logging.getLogger(__name__)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every tensor whose shape inference knows it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in values
        if value.type.tensor_type.HasField("shape")
    }


def _reduce_axes(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> list[int] | None:
    """The axes a ReduceMean reduces (attribute before opset 18, second input since), or None if not constant."""
    for attribute in node.attribute:
        if attribute.name == "axes":
            return list(attribute.ints)
    if len(node.input) > 1 and node.input[1]:
        tensor = constants.get(node.input[1])
        return None if tensor is None else [int(axis) for axis in numpy_helper.to_array(tensor).ravel()]
    return None


def _keepdims(node: onnx.NodeProto) -> bool:
    return all(attribute.i != 0 for attribute in node.attribute if attribute.name == "keepdims")


def se_squeeze_to_global_pool(model: onnx.ModelProto) -> int:
    """Replace, in place, each SE block's spatial ``ReduceMean`` (keepdims, NCHW) by ``GlobalAveragePool``.

    Returns how many were replaced. Other ReduceMean nodes (e.g. a classifier
    head's pool) are left alone; an axes tensor no node reads any more is removed.
    """
    nodes = {node.name: node for node in model.graph.node}
    constants: dict[str, onnx.TensorProto] = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    pools = [
        pool
        for pool in (nodes.get(block[0]) for block in find_se_blocks(model))
        if pool is not None and pool.op_type == "ReduceMean" and _keepdims(pool)
    ]
    ranks = _ranks(model) if pools else {}
    replaced = 0
    for pool in pools:
        rank = ranks.get(pool.input[0])
        axes = _reduce_axes(pool, constants)
        if rank != 4 or axes is None or sorted(axis % 4 for axis in axes) != [2, 3]:
            continue
        del pool.input[1:]
        del pool.attribute[:]
        pool.op_type = "GlobalAveragePool"
        pool.domain = ""
        replaced += 1
    if replaced:
        _drop_unused_initializers(model)
        logger.info("SE squeeze: %d ReduceMean node(s) now GlobalAveragePool", replaced)
    return replaced


def _names_used(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of ``graph`` reads, including nodes of nested (If/Loop/Scan) subgraphs."""
    used = {output.name for output in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                if subgraph.node:
                    used |= _names_used(subgraph)
    return used


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = _names_used(model.graph)
    kept = [init for init in model.graph.initializer if init.name in used]
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
