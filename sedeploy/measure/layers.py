"""Where INT8 loses accuracy: the error each quantized layer adds, named by the PyTorch module it came from.

As ONNX Runtime's ``qdq_loss_debug`` does, both graphs run on ONNX Runtime with their intermediate tensors
exposed; unlike it, each layer is also measured on its own. For every Conv/Gemm/MatMul whose input and
weights pass through Q/DQ, a probe graph built on the FP32 reference runs three copies of the layer on the
FP32 input: with the quantized input and weights (``error``: what this layer adds), with only the weights
quantized (``weight_error``) and with only the input quantized (``activation_error``), using the file's own
scales and zero-points. ``accumulated_error`` is the layer's output in the Q/DQ file against FP32, with the
error of every layer before it. Errors are SQNR in dB (``10 log10(sum y^2 / sum (y_q - y)^2)``: lower is
worse; 20 dB is a relative L2 error of 10%), summed over every image and element; ``relative_l2`` is the
same figure as a ratio. Every graph runs with ONNX Runtime's optimizations off, so the numbers are the
Q/DQ graph's own arithmetic (what ``qdq_loss_debug`` measures), not one backend's fused kernels.

A Q/DQ file built from an equalized graph (``sedeploy.equalization``) is compared with the FP32 source
equalized the same way (equalization is deterministic and function-preserving), so layer by layer both
sides hold the same weights.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sedeploy.artifacts.metadata import load_onnx
from sedeploy.artifacts.module_names import module_name, read_module_names
from sedeploy.errors import BadInputError
from sedeploy.optional import import_optional
from sedeploy.precision.equalize import equalizable_groups, equalization_record, equalize

logger = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "Gemm", "MatMul")
GOOD_SQNR = 25.0
"""Rows at or above this SQNR (a relative L2 error under 6%) get no hint: per-channel INT8 weights and a
well-spread input land near 35-45 dB on the digits model."""
DEFAULT_BATCH = 16
_PROBE = "sedeploy_probe"
_PASS_THROUGH = ("Cast", "Identity")


@dataclass(frozen=True)
class LayerError:
    """One quantized layer's error (SQNR in dB, lower is worse), with its PyTorch module and ONNX node."""

    module: str
    onnx_node: str
    op_type: str
    depth: int
    """Position among the graph's Conv/Gemm/MatMul layers, from the input (0)."""
    macs: int
    error: float
    weight_error: float
    activation_error: float
    accumulated_error: float
    relative_l2: float
    input_spread: float | None = None
    """Widest input channel's range over the median channel's (FP32), for inputs quantized per tensor: a few
    channels far wider than the rest (tens or more) crush every other channel's resolution."""
    equalizable_with: tuple[str, ...] = ()
    """Modules whose output channels cross-layer equalization can rescale against this layer's input."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "onnx_node": self.onnx_node,
            "op_type": self.op_type,
            "depth": self.depth,
            "macs": self.macs,
            "error": _rounded(self.error),
            "weight_error": _rounded(self.weight_error),
            "activation_error": _rounded(self.activation_error),
            "accumulated_error": _rounded(self.accumulated_error),
            "relative_l2": _rounded(self.relative_l2, 6),
            "input_spread": _rounded(self.input_spread, 1) if self.input_spread is not None else None,
            "equalizable_with": list(self.equalizable_with),
        }

    def hint(self) -> str:
        """What would help this row, in a few words (empty when it is not among the bad ones)."""
        if self.error >= GOOD_SQNR:
            return ""
        if self.activation_error <= self.weight_error and self.equalizable_with:
            return f"equalize with {', '.join(self.equalizable_with)}"
        return (
            "its input loses most" if self.activation_error <= self.weight_error else "its weights lose most"
        )


def _rounded(value: float, digits: int = 2) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


@dataclass(frozen=True)
class LayerReport:
    """Every quantized layer's error, worst first, and the layers the file leaves in float."""

    artifact: str
    reference: str
    images: int
    layers: tuple[LayerError, ...]
    float_layers: tuple[str, ...] = ()
    """Modules of the Conv/Gemm/MatMul layers without Q/DQ on input and weights (float by the recipe)."""
    equalized_reference: bool = False
    int8_mac_share: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def worst(self, count: int = 10) -> list[LayerError]:
        return list(self.layers[:count])

    def worst_modules(self, count: int = 3) -> list[str]:
        """The modules of the ``count`` worst layers, for a one-line message."""
        return [layer.module for layer in self.layers[:count]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "reference": self.reference,
            "images": self.images,
            "metric": "SQNR dB (lower is worse)",
            "equalized_reference": self.equalized_reference,
            "int8_mac_share": round(self.int8_mac_share, 4),
            "layers": [layer.to_dict() for layer in self.layers],
            "float_layers": list(self.float_layers),
            "notes": list(self.notes),
        }

    def to_text(self, rows: int = 10) -> str:
        lines = [
            f"per-layer INT8 error of {self.artifact} against {self.reference} ({self.images} images; "
            f"SQNR in dB, lower is worse; {100 * self.int8_mac_share:.0f}% of the MACs int8)",
            f"  {'module':<24} {'op':<18} {'error':>6} {'weights':>8} {'input':>6} {'accumulated':>12} "
            f"{'spread':>7}  hint",
        ]
        for layer in self.layers[:rows]:
            spread = f"{layer.input_spread:.0f}x" if layer.input_spread is not None else "-"
            lines.append(
                f"  {layer.module:<24} {layer.op_type:<18} {_db(layer.error):>6} {_db(layer.weight_error):>8} "
                f"{_db(layer.activation_error):>6} {_db(layer.accumulated_error):>12} {spread:>7}  {layer.hint()}"
            )
        if len(self.layers) > rows:
            lines.append(f"  ... {len(self.layers) - rows} more layer(s) (--json for all)")
        if self.float_layers:
            lines.append(f"  float (not quantized): {', '.join(self.float_layers)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def _db(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else "inf"


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` of two sums of squares; inf for no noise."""
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


# --- reading a Q/DQ graph -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedInput:
    """How a layer input is quantized in the Q/DQ file: DQ(Q(x)) for an activation, DQ(constant) for weights."""

    quantized_value: np.ndarray | None
    """The stored integer tensor for a constant (weights, bias); None for an activation."""
    scale: np.ndarray
    zero_point: np.ndarray | None
    quantize_axis: int | None
    dequantize_axis: int | None
    """Only ``axis`` is kept: ``saturate`` and ``block_size`` need later opsets than the FP32 graph's."""


class QdqGraph:
    """A Q/DQ ONNX graph read for its quantized layers: which inputs pass through Q/DQ, with what parameters."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.producers = {output: node for node in model.graph.node for output in node.output}
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.constants = {
            node.output[0]: next((a.t for a in node.attribute if a.name == "value"), None)
            for node in model.graph.node
            if node.op_type == "Constant"
        }

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        tensor = self.constants.get(name)
        return numpy_helper.to_array(tensor) if tensor is not None else None

    def _through(self, name: str) -> onnx.NodeProto | None:
        producer = self.producers.get(name)
        while producer is not None and producer.op_type in _PASS_THROUGH:
            producer = self.producers.get(producer.input[0])
        return producer

    def quantized_input(self, node: onnx.NodeProto, index: int) -> QuantizedInput | None:
        """The Q/DQ on ``node``'s input ``index``, or None when it reads a float tensor."""
        if index >= len(node.input) or not node.input[index]:
            return None
        dequantize = self._through(node.input[index])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return None
        scale = self.constant(dequantize.input[1])
        if scale is None:
            return None
        zero_point = (
            self.constant(dequantize.input[2]) if len(dequantize.input) > 2 and dequantize.input[2] else None
        )
        stored = self.constant(dequantize.input[0])
        if stored is not None:
            return QuantizedInput(stored, scale, zero_point, None, _axis(dequantize))
        quantize = self.producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            return None
        return QuantizedInput(None, scale, zero_point, _axis(quantize), _axis(dequantize))

    def quantized_nodes(self) -> dict[str, dict[int, QuantizedInput]]:
        """Every node (but Q/DQ) that reads an input through Q/DQ: ``{node: {input index: how}}``."""
        nodes: dict[str, dict[int, QuantizedInput]] = {}
        for node in self.model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.name:
                continue
            inputs = {
                index: quantized
                for index in range(len(node.input))
                if (quantized := self.quantized_input(node, index)) is not None
            }
            if inputs:
                nodes[node.name] = inputs
        return nodes

    def quantized_layers(self) -> list[str]:
        """Conv/Gemm/MatMul nodes whose data input and weights both pass through Q/DQ (the INT8 layers)."""
        types = {node.name: node.op_type for node in self.model.graph.node}
        return [
            name
            for name, inputs in self.quantized_nodes().items()
            if types[name] in LAYER_OPS
            and 0 in inputs
            and 1 in inputs
            and inputs[0].quantized_value is None
            and inputs[1].quantized_value is not None
        ]


def _axis(node: onnx.NodeProto) -> int | None:
    attribute = next((a for a in node.attribute if a.name == "axis"), None)
    return int(attribute.i) if attribute is not None else None


def int8_mac_share(model: onnx.ModelProto | str | os.PathLike[str]) -> float:
    """The share of the graph's Conv/Gemm/MatMul MACs whose input and weights pass through Q/DQ.

    A property of the file, not of a backend: ONNX Runtime's CPU kernels run a tensorrt-flavour file in float
    (its audit reads 0% int8) while TensorRT runs every such layer in INT8.
    """
    from sedeploy.backends.audit import source_layers

    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    quantized = set(QdqGraph(proto).quantized_layers())
    layers = source_layers(proto)
    total = sum(layer.macs for layer in layers)
    return sum(layer.macs for layer in layers if layer.name in quantized) / total if total else 0.0


# --- the FP32 reference -----------------------------------------------------------------------------------


def reference_graph(qdq: onnx.ModelProto, reference: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """The FP32 graph to compare ``qdq`` with layer by layer: ``reference``, equalized when ``qdq`` was built
    from an equalized graph. Returns the graph and whether it was equalized here."""
    wanted = equalization_record(qdq)
    if wanted is None or equalization_record(reference) is not None:
        return reference, False
    equalized, record = equalize(reference)
    done = [(group.producer, list(group.consumers)) for group in record.groups]
    if done != wanted:
        raise BadInputError(
            "the INT8 file was built from an equalized graph that the reference does not equalize to "
            f"({len(wanted)} recorded groups, {len(done)} now); give the FP32 file it was built from as reference"
        )
    return equalized, True


# --- the probe graph ---------------------------------------------------------------------------------------


def _qdq_node(op_type: str, inputs: list[str], output: str, axis: int | None) -> onnx.NodeProto:
    node = helper.make_node(op_type, inputs, [output], name=output)
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


class _ProbeBuilder:
    """Adds Q/DQ copies and layer copies to a copy of the FP32 graph; names live under ``sedeploy_probe/``."""

    def __init__(self, reference: onnx.ModelProto) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(reference)
        self.graph = self.model.graph
        self.count = 0

    def _name(self, *parts: str) -> str:
        self.count += 1
        return "/".join((_PROBE, *parts, str(self.count)))

    def _initializer(self, value: np.ndarray, *parts: str) -> str:
        name = self._name(*parts)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def _dequantize(self, source: str, quantized: QuantizedInput, label: str) -> str:
        scale = self._initializer(quantized.scale.astype(np.float32), label, "scale")
        inputs = [source, scale]
        if quantized.zero_point is not None:
            inputs.append(self._initializer(quantized.zero_point, label, "zero_point"))
        output = self._name(label, "dequantized")
        self.graph.node.append(_qdq_node("DequantizeLinear", inputs, output, quantized.dequantize_axis))
        return output

    def quantize_activation(self, tensor: str, quantized: QuantizedInput, label: str) -> str:
        """``DQ(Q(tensor))`` with the file's scale and zero-point."""
        scale = self._initializer(quantized.scale.astype(np.float32), label, "input_scale")
        inputs = [tensor, scale]
        if quantized.zero_point is not None:
            inputs.append(self._initializer(quantized.zero_point, label, "input_zero_point"))
        stored = self._name(label, "quantized")
        self.graph.node.append(_qdq_node("QuantizeLinear", inputs, stored, quantized.quantize_axis))
        return self._dequantize(stored, quantized, label)

    def dequantize_constant(self, quantized: QuantizedInput, label: str) -> str:
        assert quantized.quantized_value is not None
        stored = self._initializer(quantized.quantized_value, label, "stored")
        return self._dequantize(stored, quantized, label)

    def layer_copy(self, layer: onnx.NodeProto, inputs: Sequence[str], label: str) -> str:
        output = self._name(label, "output")
        copy = helper.make_node(layer.op_type, list(inputs), [output], name=output)
        copy.attribute.extend(layer.attribute)
        self.graph.node.append(copy)
        return output

    def channel_ranges(self, tensor: str, rank: int, label: str) -> str:
        """An output: each channel's largest magnitude in ``tensor`` (axis 1 of an N, C, ... tensor)."""
        magnitude = self._name(label, "magnitude")
        self.graph.node.append(helper.make_node("Abs", [tensor], [magnitude], name=magnitude))
        axes = self._initializer(np.array([0, *range(2, rank)], dtype=np.int64), label, "axes")
        output = self._name(label, "channel_ranges")
        self.graph.node.append(
            helper.make_node("ReduceMax", [magnitude, axes], [output], name=output, keepdims=0)
        )
        self.graph.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [None]))
        return output

    def sum_of_squares(self, tensor: str, label: str, minus: str | None = None) -> str:
        """A scalar output: ``sum((tensor - minus)^2)`` (or ``sum(tensor^2)``) in float32."""
        source = tensor
        if minus is not None:
            source = self._name(label, "difference")
            self.graph.node.append(helper.make_node("Sub", [tensor, minus], [source], name=source))
        output = self._name(label, "sum_of_squares")
        self.graph.node.append(
            helper.make_node("ReduceSumSquare", [source], [output], name=output, keepdims=0)
        )
        self.graph.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, []))
        return output


@dataclass(frozen=True)
class _Probe:
    node: str
    signal: str
    full: str
    weights: str | None
    activations: str | None
    reference_output: str
    channel_ranges: tuple[str, ...] = ()


def probe_graph(
    reference: onnx.ModelProto, nodes: Mapping[str, Mapping[int, QuantizedInput]]
) -> tuple[onnx.ModelProto, list[_Probe]]:
    """The FP32 graph with, for each quantized node, copies of it on quantized inputs and their squared errors:
    every quantized input (``full``), only the constant ones (weights, bias) and only the activations."""
    builder = _ProbeBuilder(reference)
    originals = {node.name: node for node in reference.graph.node}
    inferred = onnx.shape_inference.infer_shapes(reference)
    ranks = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in [*inferred.graph.value_info, *inferred.graph.input]
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape")
    }
    probes = []
    for name, quantized in nodes.items():
        node = originals[name]
        replaced = {}
        for index, how in quantized.items():
            if how.quantized_value is None:
                replaced[index] = builder.quantize_activation(node.input[index], how, name)
            else:
                replaced[index] = builder.dequantize_constant(how, name)
        constant = {index for index, how in quantized.items() if how.quantized_value is not None}

        def copy(indices: set[int], node: onnx.NodeProto = node, replaced: dict[int, str] = replaced) -> str:
            inputs = [replaced[i] if i in indices else tensor for i, tensor in enumerate(node.input)]
            return builder.layer_copy(node, inputs, node.name)

        ranges = tuple(
            builder.channel_ranges(node.input[index], ranks[node.input[index]], name)
            for index, how in quantized.items()
            if how.quantized_value is None and how.scale.size == 1 and ranks.get(node.input[index], 0) >= 2
        )
        output = node.output[0]
        everything = set(replaced)
        weights = copy(constant) if constant and constant != everything else None
        activations = copy(everything - constant) if constant and constant != everything else None
        probes.append(
            _Probe(
                node=name,
                signal=builder.sum_of_squares(output, name),
                full=builder.sum_of_squares(copy(everything), name, output),
                weights=builder.sum_of_squares(weights, name, output) if weights else None,
                activations=builder.sum_of_squares(activations, name, output) if activations else None,
                reference_output=output,
                channel_ranges=ranges,
            )
        )
        if output not in {value.name for value in builder.graph.output}:
            builder.graph.output.append(onnx.ValueInfoProto(name=output))
    return builder.model, probes


def _load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The ONNX file with its weights in memory (external data checked by the contract's reader first)."""
    model = load_onnx(path)
    try:
        onnx.load_external_data_for_model(model, str(Path(path).parent))
    except Exception as error:
        raise BadInputError(f"{path}: cannot read its external data ({error}); export it again") from None
    return model


def _session(model: onnx.ModelProto) -> Any:
    ort = import_optional("onnxruntime", "cpu")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)


def _input_name(model: onnx.ModelProto) -> str:
    initializers = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {output.name for output in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in existing)
    return copy


WEIGHT_STEPS = 1.0
"""A reference weight further than this many quantization steps from the file's dequantized weight is not
the weight the file was quantized from (rounding leaves half a step; FP16 scales a little more)."""


def mismatched_weights(
    reference: onnx.ModelProto, nodes: Mapping[str, Mapping[int, QuantizedInput]]
) -> list[str]:
    """Nodes whose quantized weights are not a rounding of the reference's: the wrong FP32 file was given."""
    initializers = {init.name: init for init in reference.graph.initializer}
    originals = {node.name: node for node in reference.graph.node}
    mismatched = []
    for name, quantized in nodes.items():
        how = quantized.get(1)
        node = originals[name]
        if (
            how is None
            or how.quantized_value is None
            or len(node.input) < 2
            or node.input[1] not in initializers
        ):
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        scale = how.scale.astype(np.float64)
        zero = how.zero_point.astype(np.float64) if how.zero_point is not None else np.zeros_like(scale)
        stored = how.quantized_value.astype(np.float64)
        if stored.shape != weight.shape:
            mismatched.append(name)
            continue
        if scale.size > 1:
            axis = (how.dequantize_axis if how.dequantize_axis is not None else 1) % weight.ndim
            shape = [1] * weight.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        steps = np.abs(weight - (stored - zero) * scale) / np.where(scale > 0, scale, 1.0)
        if float(np.max(steps)) > WEIGHT_STEPS:
            mismatched.append(name)
    return mismatched


def layer_errors(
    artifact: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH,
) -> LayerReport:
    """The error each quantized node of the Q/DQ ONNX ``artifact`` adds against the FP32 ONNX ``reference``
    on ``images`` (preprocessed, NCHW float32), worst first. Both INT8 flavours; any Q/DQ ONNX whose node
    names and weights match its FP32 source (a mismatch is refused, naming the fix)."""
    if len(images) == 0:
        raise BadInputError(
            "no images to measure the per-layer error on; give held-out or calibration images"
        )
    qdq_model = _load(artifact)
    reference_model, equalized = reference_graph(qdq_model, _load(reference))
    qdq = QdqGraph(qdq_model)
    reference_nodes = {node.name for node in reference_model.graph.node}
    nodes = {name: how for name, how in qdq.quantized_nodes().items() if name in reference_nodes}
    mismatched = mismatched_weights(reference_model, nodes)
    weighted = [name for name, how in nodes.items() if 1 in how and how[1].quantized_value is not None]
    if not nodes or (weighted and 2 * len(mismatched) > len(weighted)):
        raise BadInputError(
            f"{reference} is not the FP32 graph {artifact} was quantized from ("
            + (
                f"{len(mismatched)} of {len(weighted)} layers' weights differ"
                if nodes
                else "no node names match"
            )
            + "); give the FP32 ONNX it was built from as reference"
        )
    probe_model, probes = probe_graph(reference_model, nodes)
    qdq_outputs = {node.name: node.output[0] for node in qdq_model.graph.node if node.name in nodes}
    accumulated_model = _with_outputs(qdq_model, list(qdq_outputs.values()))
    probe_session, accumulated_session = _session(probe_model), _session(accumulated_model)
    probe_input, qdq_input = _input_name(probe_model), _input_name(qdq_model)
    scalar_names = [
        name
        for probe in probes
        for name in (probe.signal, probe.full, probe.weights, probe.activations)
        if name is not None
    ]
    range_names = [name for probe in probes for name in probe.channel_ranges]
    reference_names = list(dict.fromkeys(probe.reference_output for probe in probes))
    totals = dict.fromkeys(scalar_names, 0.0)
    channel_ranges: dict[str, np.ndarray] = {}
    drift = {probe.node: 0.0 for probe in probes}
    for batch in _batches(images, batch_size):
        values = probe_session.run(scalar_names + range_names + reference_names, {probe_input: batch})
        for name, value in zip(scalar_names, values[: len(scalar_names)], strict=True):
            totals[name] += float(value)
        measured = values[len(scalar_names) : len(scalar_names) + len(range_names)]
        for name, value in zip(range_names, measured, strict=True):
            channel_ranges[name] = np.maximum(channel_ranges.get(name, value), value)
        float_outputs = dict(
            zip(reference_names, values[len(scalar_names) + len(range_names) :], strict=True)
        )
        quantized_outputs = dict(
            zip(
                qdq_outputs.values(),
                accumulated_session.run(list(qdq_outputs.values()), {qdq_input: batch}),
                strict=True,
            )
        )
        for probe in probes:
            difference = quantized_outputs[qdq_outputs[probe.node]].astype(np.float64) - float_outputs[
                probe.reference_output
            ].astype(np.float64)
            drift[probe.node] += float(np.sum(difference * difference))
    notes = []
    if equalized:
        notes.append("the reference was equalized as the INT8 file's source was (cross-layer equalization)")
    if mismatched:
        notes.append(f"the reference's weights differ from the file's in {', '.join(mismatched)}")
    order = {node.name: index for index, node in enumerate(reference_model.graph.node)}
    cures: dict[str, list[str]] = {}
    for producer, consumers in equalizable_groups(reference_model).items():
        for consumer in consumers:
            cures.setdefault(consumer, []).append(producer)
    rows = []
    names = read_module_names(qdq_model)
    macs = _macs(qdq_model)
    types = {node.name: node.op_type for node in qdq_model.graph.node}

    def part(probe: _Probe, tensor: str | None, constant: bool) -> float:
        """The weights' or the activations' share: its own probe, the whole error when only that part is
        quantized, inf when it is not quantized at all."""
        if tensor is not None:
            return sqnr_db(totals[probe.signal], totals[tensor])
        kinds = {how.quantized_value is not None for how in nodes[probe.node].values()}
        return sqnr_db(totals[probe.signal], totals[probe.full]) if kinds == {constant} else math.inf

    for probe in probes:
        signal = totals[probe.signal]
        rows.append(
            LayerError(
                module=module_name(names, probe.node),
                onnx_node=probe.node,
                op_type=types[probe.node],
                depth=order[probe.node],
                macs=macs.get(probe.node, 0),
                error=sqnr_db(signal, totals[probe.full]),
                weight_error=part(probe, probe.weights, constant=True),
                activation_error=part(probe, probe.activations, constant=False),
                accumulated_error=sqnr_db(signal, drift[probe.node]),
                relative_l2=math.sqrt(totals[probe.full] / signal) if signal > 0 else math.inf,
                input_spread=max(spreads, default=None)
                if (spreads := _spreads(probe, channel_ranges))
                else None,
                equalizable_with=tuple(
                    module_name(names, producer) for producer in cures.get(probe.node, ())
                ),
            )
        )
    rows.sort(key=lambda row: (row.error, row.depth))
    quantized_layers = set(qdq.quantized_layers())
    float_layers = tuple(
        module_name(names, node.name)
        for node in qdq_model.graph.node
        if node.op_type in LAYER_OPS and node.name not in quantized_layers
    )
    total = sum(macs.values())
    share = sum(macs.get(name, 0) for name in quantized_layers) / total if total else 0.0
    return LayerReport(
        artifact=str(artifact),
        reference=str(reference),
        images=len(images),
        layers=tuple(rows),
        float_layers=float_layers,
        equalized_reference=equalized,
        int8_mac_share=share,
        notes=tuple(notes),
    )


def _spreads(probe: _Probe, channel_ranges: Mapping[str, np.ndarray]) -> list[float]:
    return [spread for name in probe.channel_ranges if (spread := _spread(channel_ranges[name])) is not None]


def _spread(ranges: np.ndarray) -> float | None:
    """The widest channel's range over the median channel's (channels that are never non-zero left out)."""
    alive = ranges[ranges > 0]
    return float(alive.max() / np.median(alive)) if alive.size else None


def _macs(model: onnx.ModelProto) -> dict[str, int]:
    from sedeploy.backends.audit import source_layers

    return {layer.name: layer.macs for layer in source_layers(model)}


def plot_layer_errors(report: LayerReport, path: str | os.PathLike[str]) -> Path:
    """A PNG of each layer's error (weights and input apart, and the accumulated error) in graph order, one
    evenly spaced tick per layer named by its module (matplotlib, the ``plot`` extra)."""
    from sedeploy.plots import new_figure, save_figure

    rows = sorted(report.layers, key=lambda row: row.depth)
    positions = list(range(len(rows)))
    figure, axes = new_figure((max(6.0, 0.22 * len(rows)), 4.2))
    for values, label in (
        ([row.error for row in rows], "this layer (input and weights)"),
        ([row.weight_error for row in rows], "weights only"),
        ([row.activation_error for row in rows], "input only"),
        ([row.accumulated_error for row in rows], "accumulated"),
    ):
        finite = [value if math.isfinite(value) else np.nan for value in values]
        axes.plot(positions, finite, marker="o", markersize=3, linewidth=1, label=label)
    axes.set_xticks(positions, [row.module for row in rows], rotation=90, fontsize=6)
    axes.set_xlim(-0.5, len(rows) - 0.5)
    axes.set_ylabel("SQNR (dB, lower is worse)")
    title = f"INT8 error per layer: {Path(report.artifact).name} ({report.images} images)"
    return save_figure(figure, axes, title, Path(path), legend_size=7)
