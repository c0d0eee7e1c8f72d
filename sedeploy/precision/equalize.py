"""Cross-layer equalization of an FP32 ONNX graph (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", 2019), before calibration.

A ReLU commutes with a positive per-channel scale: ``relu(x / s) * s == relu(x)``. So output channel ``i``
of a convolution can be divided by ``s_i`` (its weights and bias) and every layer that reads that channel
multiplied by ``s_i`` (its input-channel weights) without changing the network's function. Choosing
``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: the range of the producer's output-channel weights, ``r2_i``: that of
the consumers' input-channel weights) gives both the same range ``sqrt(r1_i * r2_i)``, so per-channel
weights and per-tensor activations both quantize well. A trained network's few channels that are far wider
than the rest (the INT8 failure mode in FACTS.md) are exactly what this removes.

Which channels may be rescaled is decided on the graph, as AIMET's ``cle`` decides it on the module tree: from
a Conv's output, the scaled tensor may flow through per-channel, positively homogeneous operations (Relu,
LeakyRelu, max/average pooling, the spatial means of an SE squeeze, Identity, a Mul by a tensor that is not
itself scaled: the SE gate, whose own input is compensated) to Conv (and Gemm, after a flatten of a 1x1
map) inputs, which compensate. Anything else on the way (a residual Add, a Sigmoid, a concatenation, a
graph output) leaves that producer alone: a residual stream cannot be rescaled one branch at a time.
BatchNorm must already be folded (the exporter folds every foldable one). Chains (depthwise -> pointwise)
are equalized pairwise, pass after pass, until the scales settle.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from sedeploy.artifacts.module_names import module_name, read_module_names
from sedeploy.optional import import_optional
from sedeploy.precision._common import input_name, load, save
from sedeploy.precision.recipe import PrecisionError

logger = logging.getLogger(__name__)

EQUALIZATION_KEY = "sedeploy.equalization"
"""Optional metadata key on an equalized graph (and the precision files built from it): JSON with the
method and the producer -> consumers groups, so a report can rebuild the same FP32 reference."""
METHOD = "cross-layer equalization (Nagel et al. 2019)"
MAX_PASSES = 20
SETTLED = 1e-3
"""Stop when no pass changes any scale by more than this (relative)."""
FUNCTION_TOLERANCE = 1e-4
"""An equalized graph must give the same logits within this, relative to the largest logit."""
_PASS_THROUGH = {
    "Relu",
    "LeakyRelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "Dropout",
    "Mul",
    "ReduceMean",
    "ReduceMax",
    "Flatten",
    "Reshape",
}


@dataclass(frozen=True)
class EqualizedGroup:
    """One producer whose output channels were rescaled, and the layers that compensate."""

    producer: str
    consumers: tuple[str, ...]
    channels: int
    smallest_scale: float
    largest_scale: float
    producer_module: str = ""
    consumer_modules: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "producer": self.producer,
            "producer_module": self.producer_module,
            "consumers": list(self.consumers),
            "consumer_modules": list(self.consumer_modules),
            "channels": self.channels,
            "smallest_scale": self.smallest_scale,
            "largest_scale": self.largest_scale,
        }


@dataclass(frozen=True)
class Equalization:
    """What :func:`equalize` did: the groups equalized and the passes it took."""

    groups: tuple[EqualizedGroup, ...]
    passes: int
    skipped: dict[str, str] = field(default_factory=dict)
    """Conv nodes left alone, with why (the first operation that stops a rescale)."""

    @property
    def pairs(self) -> int:
        """Producer -> consumer pairs equalized (a producer read by two layers counts twice)."""
        return sum(len(group.consumers) for group in self.groups)

    def summary(self) -> str:
        """``cross-layer equalization on 12 pairs``: the words the build's one line uses."""
        return f"cross-layer equalization on {self.pairs} pair{'s' if self.pairs != 1 else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "pairs": self.pairs,
            "passes": self.passes,
            "groups": [group.to_dict() for group in self.groups],
        }


@dataclass
class _Group:
    producer: onnx.NodeProto
    consumers: list[onnx.NodeProto]
    scale: np.ndarray


def _consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    attribute = next((a for a in node.attribute if a.name == name), None)
    return onnx.helper.get_attribute_value(attribute) if attribute is not None else default


def _spatial_only(node: onnx.NodeProto, constants: dict[str, np.ndarray], rank: int | None) -> bool:
    """Whether a ReduceMean/ReduceMax reduces only spatial axes (keeping the channel axis 1)."""
    axes = _attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1] in constants:
        axes = constants[node.input[1]].tolist()
    if axes is None or rank is None:
        return False
    return all((axis % rank) >= 2 for axis in axes)


def _flattens_channels(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> bool:
    """A Flatten/Reshape of an (N, C, 1, 1) map to (N, C): feature k stays channel k."""
    before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
    return (
        before is not None
        and after is not None
        and len(before) == 4
        and before[2:] == [1, 1]
        and len(after) == 2
        and after[1] == before[1]
    )


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | None]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [
                int(dim.dim_value) if dim.HasField("dim_value") else None
                for dim in info.type.tensor_type.shape.dim
            ]
    return shapes


def _find_group(
    producer: onnx.NodeProto,
    consumers: dict[str, list[onnx.NodeProto]],
    constants: dict[str, np.ndarray],
    shapes: dict[str, list[int | None]],
    graph_outputs: set[str],
) -> tuple[list[onnx.NodeProto], str | None]:
    """The layers that compensate a rescale of ``producer``'s output channels, or why there are none."""
    scaled = {producer.output[0]}
    frontier = [producer.output[0]]
    endpoints: dict[str, onnx.NodeProto] = {}
    multiplies: list[onnx.NodeProto] = []
    while frontier:
        tensor = frontier.pop()
        if tensor in graph_outputs:
            return [], "its output reaches a graph output"
        for user in consumers.get(tensor, []):
            if user.op_type in ("Conv", "Gemm") and user.input[0] == tensor:
                weight = user.input[1] if len(user.input) > 1 else ""
                if weight not in constants or tensor in user.input[1:]:
                    return [], f"{user.op_type} {user.name} has no constant weight"
                if user.op_type == "Gemm" and _attribute(user, "transA", 0):
                    return [], f"Gemm {user.name} transposes its input"
                endpoints[user.name] = user
                continue
            if user.op_type not in _PASS_THROUGH:
                return [], f"{user.op_type} {user.name} is not channel-wise (a residual Add, a gate, ...)"
            if user.op_type in ("ReduceMean", "ReduceMax") and not _spatial_only(
                user, constants, len(shapes.get(tensor) or []) or None
            ):
                return [], f"{user.op_type} {user.name} reduces over channels"
            if user.op_type in ("Flatten", "Reshape") and not _flattens_channels(user, shapes):
                return [], f"{user.op_type} {user.name} mixes channels with space"
            if user.op_type == "Mul":
                multiplies.append(user)
            if user.input[0] != tensor and user.op_type != "Mul":
                return [], f"{user.op_type} {user.name} reads the tensor as a parameter"
            output = user.output[0]
            if output not in scaled:
                scaled.add(output)
                frontier.append(output)
    for multiply in multiplies:
        if sum(name in scaled for name in multiply.input) != 1:
            return [], f"Mul {multiply.name} multiplies two rescaled tensors"
        other = next(name for name in multiply.input if name not in scaled)
        if not _per_channel(shapes.get(other), shapes.get(multiply.output[0])):
            return [], f"Mul {multiply.name} scales by a tensor that is not one value per channel"
    if not endpoints:
        return [], "nothing reads its channels"
    return list(endpoints.values()), None


def _per_channel(factor: list[int | None] | None, result: list[int | None] | None) -> bool:
    """Whether a Mul by a tensor of shape ``factor`` is one value per (batch, channel): it commutes with a
    per-channel rescale of the other input (an SE gate ``(N, C, 1, 1)``, a scalar)."""
    if factor is None or result is None:
        return False
    if len(factor) == 0 or factor == [1]:
        return True
    return len(factor) == len(result) and all(size == 1 for size in factor[2:])


def _output_channel_ranges(weight: np.ndarray) -> np.ndarray:
    return np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)


def _grouped(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """A conv weight ``(G * O_g, I_g, k...)`` viewed as ``(G, O_g, I_g, k...)``: input channel ``g * I_g + i``."""
    groups = int(_attribute(node, "group", 1))
    return weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])


def _input_channel_ranges(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """Range of the weights that read each input channel of ``node`` (grouped convolutions too)."""
    if node.op_type == "Gemm":
        matrix = weight.T if _attribute(node, "transB", 0) else weight
        return np.abs(matrix).max(axis=1)
    grouped = np.abs(_grouped(node, weight))
    return grouped.max(axis=(1, *range(3, grouped.ndim))).reshape(-1)


def _scale_input_channels(node: onnx.NodeProto, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if node.op_type == "Gemm":
        return weight * (scale[None, :] if _attribute(node, "transB", 0) else scale[:, None])
    grouped = _grouped(node, weight)
    factors = scale.reshape(grouped.shape[0], 1, grouped.shape[2], *([1] * (grouped.ndim - 3)))
    return (grouped * factors).reshape(weight.shape)


def _groups(
    graph_model: onnx.ModelProto, constants: dict[str, np.ndarray]
) -> tuple[list[tuple[onnx.NodeProto, list[onnx.NodeProto]]], dict[str, str]]:
    graph = graph_model.graph
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    consumers = _consumers_of(graph)
    shapes = _shapes(graph_model)
    graph_outputs = {output.name for output in graph.output}
    groups: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    skipped: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        owned = [name for name in node.input[1:3] if name]
        if any(uses.get(name, 0) != 1 for name in owned):
            skipped[node.name] = "its weights are shared with another node"
            continue
        members, reason = _find_group(node, consumers, constants, shapes, graph_outputs)
        if reason is not None:
            skipped[node.name] = reason
            continue
        if any(uses.get(member.input[1], 0) != 1 for member in members):
            skipped[node.name] = "a consumer's weights are shared with another node"
            continue
        groups.append((node, members))
    return groups, skipped


def _float_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        init.name: numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT
    }


def equalizable_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """``{producer node: [consumer nodes]}`` that :func:`equalize` would rescale in ``model`` (nothing changed):
    what the per-layer report names as the cure for a layer whose input has outlier channels."""
    groups, _ = _groups(model, _float_constants(model))
    return {producer.name: [member.name for member in members] for producer, members in groups}


def equalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Equalization]:
    """Return an equalized copy of the FP32 graph ``model`` and what was equalized.

    Node and tensor names stay (so module names and calibration keys still apply); only weight and bias
    values change. The copy carries :data:`EQUALIZATION_KEY`. Checked to be function-preserving by
    :func:`check_function_preserved` (the caller runs it on images).
    """
    equalized = onnx.ModelProto()
    equalized.CopyFrom(model)
    graph = equalized.graph
    for index, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    initializers = {init.name: init for init in graph.initializer}
    constants = _float_constants(equalized)
    found, skipped = _groups(equalized, constants)
    groups = [
        _Group(producer, members, np.ones(constants[producer.input[1]].shape[0], dtype=np.float64))
        for producer, members in found
    ]
    passes = 0
    largest_change = np.inf
    while groups and passes < MAX_PASSES and largest_change >= SETTLED:
        passes += 1
        largest_change = 0.0
        for group in groups:
            producer_weight = constants[group.producer.input[1]]
            channels = producer_weight.shape[0]
            r1 = _output_channel_ranges(producer_weight).astype(np.float64)
            r2 = np.zeros(channels, dtype=np.float64)
            for member in group.consumers:
                ranges = _input_channel_ranges(member, constants[member.input[1]])
                peak = ranges.max()
                if peak > 0:
                    r2 = np.maximum(r2, ranges / peak)
            usable = (r1 > 0) & (r2 > 0)
            scale = np.ones(channels, dtype=np.float64)
            scale[usable] = np.sqrt(r1[usable] / r2[usable])
            scale /= np.exp(np.mean(np.log(scale)))  # the overall level stays where it was
            largest_change = max(largest_change, float(np.max(np.abs(scale - 1.0))))
            _apply(group, scale, constants)
            group.scale *= scale
    for name in {init for group in groups for init in _owned(group)}:
        initializers[name].CopyFrom(numpy_helper.from_array(constants[name].astype(np.float32), name))
    names = read_module_names(model)
    record = Equalization(
        groups=tuple(
            EqualizedGroup(
                producer=group.producer.name,
                consumers=tuple(member.name for member in group.consumers),
                channels=len(group.scale),
                smallest_scale=float(group.scale.min()),
                largest_scale=float(group.scale.max()),
                producer_module=module_name(names, group.producer.name),
                consumer_modules=tuple(module_name(names, member.name) for member in group.consumers),
            )
            for group in groups
        ),
        passes=passes,
        skipped=skipped,
    )
    _write_record(equalized, record)
    logger.info("%s in %d pass(es); %d conv(s) left alone", record.summary(), record.passes, len(skipped))
    return equalized, record


def _owned(group: _Group) -> list[str]:
    names = [name for name in group.producer.input[1:3] if name]
    return names + [member.input[1] for member in group.consumers]


def _apply(group: _Group, scale: np.ndarray, constants: dict[str, np.ndarray]) -> None:
    producer = group.producer
    weight = constants[producer.input[1]]
    shape = (-1,) + (1,) * (weight.ndim - 1)
    constants[producer.input[1]] = weight / scale.reshape(shape)
    if len(producer.input) > 2 and producer.input[2]:
        constants[producer.input[2]] = constants[producer.input[2]] / scale
    for member in group.consumers:
        constants[member.input[1]] = _scale_input_channels(member, constants[member.input[1]], scale)


def _write_record(model: onnx.ModelProto, record: Equalization) -> None:
    kept = [(prop.key, prop.value) for prop in model.metadata_props if prop.key != EQUALIZATION_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    summary = {
        "method": METHOD,
        "groups": [[group.producer, list(group.consumers)] for group in record.groups],
    }
    model.metadata_props.add(key=EQUALIZATION_KEY, value=json.dumps(summary, sort_keys=True))


def equalization_record(model: onnx.ModelProto) -> list[tuple[str, list[str]]] | None:
    """The producer -> consumers groups recorded in ``model`` by :func:`equalize`, or None if not equalized."""
    text = next((prop.value for prop in model.metadata_props if prop.key == EQUALIZATION_KEY), None)
    if text is None:
        return None
    try:
        groups = json.loads(text)["groups"]
        return [(str(producer), [str(name) for name in members]) for producer, members in groups]
    except (ValueError, KeyError, TypeError):
        return None


def check_function_preserved(
    original: onnx.ModelProto,
    equalized: onnx.ModelProto,
    images: np.ndarray,
    tolerance: float = FUNCTION_TOLERANCE,
) -> float:
    """Run both graphs on ``images`` (ONNX Runtime, CPU) and return the largest logit difference relative to the
    largest logit; :class:`PrecisionError` when it exceeds ``tolerance`` (the equalization's parity gate)."""
    ort = import_optional("onnxruntime", "cpu")
    outputs = []
    for graph in (original, equalized):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {input_name(graph): images})[0].astype(np.float64))
    reference, candidate = outputs
    difference = float(np.max(np.abs(reference - candidate)) / max(float(np.max(np.abs(reference))), 1e-12))
    if difference > tolerance:
        raise PrecisionError(
            f"cross-layer equalization changed the FP32 logits by {difference:.2e} (relative; allowed "
            f"{tolerance:g}); build without equalize, and please report this"
        )
    return difference


def equalize_file(
    source: str | os.PathLike[str], output: str | os.PathLike[str], images: np.ndarray
) -> Equalization:
    """Equalize the FP32 ONNX ``source`` into ``output`` (atomically) after checking on ``images`` that the logits
    did not change (:func:`check_function_preserved`); nothing is written when they did."""
    model = load(Path(source))
    equalized, record = equalize(model)
    check_function_preserved(model, equalized, np.ascontiguousarray(images, dtype=np.float32))
    save(equalized, Path(output))
    return record


def equalized_groups_text(record: Equalization, limit: int = 4) -> str:
    """The groups in the user's names, for logs: ``layer1.0.conv1 -> layer1.0.conv2, ...``."""
    shown: Sequence[EqualizedGroup] = record.groups[:limit]
    parts = [f"{group.producer_module} -> {', '.join(group.consumer_modules)}" for group in shown]
    more = f" and {len(record.groups) - limit} more" if len(record.groups) > limit else ""
    return "; ".join(parts) + more
