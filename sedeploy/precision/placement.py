"""Where an INT8 recipe puts Q/DQ on an exported graph: the one rule, read from what :func:`quantize_int8` writes.

Post-training quantization and quantization-aware fine-tuning (:mod:`sedeploy.training.qat`) must quantize
the same tensors, node for node, or the fine-tuned scales would be learned for another network. So the
placement is never re-derived: :func:`recipe_placement` runs the recipe's own quantizer on the FP32 graph
with placeholder ranges and :func:`placement_of` reads the Q/DQ pairs it wrote.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from sedeploy.graphs.se_blocks import graph_with_node_names
from sedeploy.precision._common import ModelInput, load
from sedeploy.precision.calibration import CalibrationRanges, calibrated_tensors
from sedeploy.precision.recipe import Int8Recipe

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Placement:
    """The tensors of the FP32 graph that pass through a Q/DQ pair, and the nodes that read them."""

    activations: tuple[str, ...]
    """Activation tensors (names in the FP32 graph) quantized, in graph order."""
    weights: tuple[str, ...]
    """Initializers (weights) quantized."""
    quantized_nodes: tuple[str, ...]
    """Nodes with at least one input read through Q/DQ: the layers that run INT8."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "activations": list(self.activations),
            "weights": list(self.weights),
            "quantized_nodes": list(self.quantized_nodes),
        }


def producers_of(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Each tensor's producing node."""
    return {output: node for node in model.graph.node for output in node.output}


def before_casts(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The tensor ``name`` was cast from, through any chain of Casts: FP16 typing (the tensorrt flavour) inserts
    them, and a tensor read through a Cast counts as the tensor before it, so both float types give one name."""
    node = producers.get(name)
    while node is not None and node.op_type == "Cast":
        name = node.input[0]
        node = producers.get(name)
    return name


def quantized_tensors(qdq_model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """Each QuantizeLinear with the tensor it quantizes, named as in the FP32 graph (:func:`before_casts`)."""
    producers = producers_of(qdq_model)
    return [
        (node, before_casts(node.input[0], producers))
        for node in qdq_model.graph.node
        if node.op_type == "QuantizeLinear"
    ]


def placement_of(qdq_model: onnx.ModelProto) -> Placement:
    """The placement a Q/DQ graph carries: each QuantizeLinear's float input, and who reads its DequantizeLinear."""
    graph = qdq_model.graph
    initializers = {init.name for init in graph.initializer}
    producers = producers_of(qdq_model)
    activations: dict[str, None] = {}
    weights: dict[str, None] = {}
    for _, tensor in quantized_tensors(qdq_model):
        (weights if tensor in initializers else activations)[tensor] = None
    dequantized: set[str] = set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            dequantized.add(node.output[0])
            quantize = producers.get(node.input[0])
            if quantize is None and node.input[0] in initializers:  # weights stored already quantized
                weights[node.input[0]] = None
    consumers = {
        node.name: None
        for node in graph.node
        if node.op_type not in _QDQ_OPS and any(name in dequantized for name in node.input)
    }
    return Placement(tuple(activations), tuple(weights), tuple(consumers))


def recipe_placement(model: ModelInput, recipe: Int8Recipe) -> Placement:
    """Where ``recipe`` puts Q/DQ on the FP32 graph ``model``: the recipe quantized with placeholder ranges.

    Ranges do not move Q/DQ (only scales), so any range gives the same placement as a calibrated build.
    """
    from sedeploy.precision.int8 import quantize_int8

    proto = graph_with_node_names(load(model))
    placeholder = CalibrationRanges.given(
        recipe, dict.fromkeys(calibrated_tensors(proto), (-1.0, 1.0)), origin="placement"
    )
    with tempfile.TemporaryDirectory(prefix="sedeploy-placement-") as work:
        source, output = Path(work) / "model.onnx", Path(work) / "model.int8.onnx"
        onnx.save_model(proto, source)
        quantize_int8(source, output, placeholder, recipe)
        return placement_of(onnx.load(str(output)))
