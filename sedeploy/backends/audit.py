"""The precision audit: what precision each Conv/Gemm/MatMul of the source model runs in after the backend optimised it.

An artifact's name and manifest say what was asked; this says what runs. Each
backend has one function behind one interface (:data:`AUDITORS`):

- ONNX Runtime: the graph as ONNX Runtime optimizes it (``*.ort.onnx``, or the
  precision ONNX optimized here at level ``all``): QLinearConv/QGemm/... run INT8,
  a float Conv/Gemm/MatMul runs in the type of its input, traced through the
  optimized graph (ONNX Runtime's x86 CPU kernels turn an FP16 graph back into
  FP32 with ``InsertedPrecisionFreeCast`` nodes; a Q/DQ pair it does not fuse
  feeds a float Conv);
- OpenVINO: the compiled model's runtime precision per layer
  (``get_runtime_model()`` ops' ``rt_info['runtimePrecision']``), matched through
  ``originalLayersNames``;
- TensorRT: the engine inspector's per-layer JSON (the data type of each layer's
  input), matched through the layer names and their ONNX metadata.

The answer is summed as shares of the source model's MACs per precision, with the
layers left in float by name; :func:`audit_gate` fails a build whose asked
precision covers too little of them.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sedeploy.artifacts import naming
from sedeploy.artifacts.manifest import PRECISIONS, matching_manifest
from sedeploy.artifacts.metadata import load_onnx
from sedeploy.artifacts.precision import FLOAT_TYPE_PRECISION
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import sha256_of_file
from sedeploy.precision.recipe import PrecisionError

logger = logging.getLogger(__name__)

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
"""The source ops the audit weighs: nearly all of a classifier's multiply-accumulates."""
PRECISION_FAMILIES: dict[str, frozenset[str]] = {
    "int8": frozenset({"int8"}),
    "fp16": frozenset({"fp16", "bf16"}),
    "fp32": frozenset(PRECISIONS),
}
"""Runtime precisions that honour an asked precision: FP16 is honoured by bf16 too (the OpenVINO runner asks for
bf16 on a CPU without FP16 arithmetic); nothing is below FP32."""
DEFAULT_MIN_PRECISION_SHARE = 0.9

_INT8_OPS = frozenset(
    {
        "QLinearConv",
        "QGemm",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
    }
)
_FLOAT_COMPUTE_OPS = frozenset(
    {"Conv", "FusedConv", "NhwcFusedConv", "NhwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
)
_CHAIN_OPS = frozenset(
    {
        "Relu",
        "Sigmoid",
        "Clip",
        "BatchNormalization",
        "Add",
        "QuantizeLinear",
        "DequantizeLinear",
        "LeakyRelu",
    }
)
_ONNX_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "fp32",
    onnx.TensorProto.FLOAT16: "fp16",
    onnx.TensorProto.BFLOAT16: "bf16",
    onnx.TensorProto.DOUBLE: "fp64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "int8",
    onnx.TensorProto.INT32: "int32",
}


@dataclass(frozen=True)
class SourceLayer:
    """One Conv/Gemm/MatMul of the source model, with its MACs per image and the names a backend may give it."""

    name: str
    op_type: str
    macs: int
    aliases: tuple[str, ...]
    """Its output tensor and the nodes/tensors of the elementwise chain after it, which a backend fuses into it."""


@dataclass(frozen=True)
class LayerPrecision:
    """What precision one source layer runs in, and as what backend layer."""

    name: str
    op_type: str
    macs: int
    precision: str
    """``int8``, ``fp16``, ``bf16``, ``fp32``, ``fp8``, or ``unknown`` where the backend's layer was not found."""
    runs_as: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "macs": self.macs,
            "precision": self.precision,
            "runs_as": self.runs_as,
        }


@dataclass(frozen=True)
class PrecisionAudit:
    """Per-layer runtime precisions of one artifact on one backend, and their MAC shares."""

    backend: str
    artifact: str
    layers: tuple[LayerPrecision, ...]
    method: str
    """How the backend was asked (e.g. "ONNX Runtime optimized graph, level all")."""

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def shares(self) -> dict[str, float]:
        """Share of the source model's Conv/Gemm/MatMul MACs per runtime precision, largest first."""
        total = self.total_macs or 1
        sums: dict[str, int] = {}
        for layer in self.layers:
            sums[layer.precision] = sums.get(layer.precision, 0) + layer.macs
        return {name: sums[name] / total for name in sorted(sums, key=lambda key: -sums[key])}

    def share_of(self, asked: str, excluding: Collection[str] = ()) -> float:
        """Share of the MACs that run in ``asked`` precision or one that honours it (:data:`PRECISION_FAMILIES`).

        ``excluding``: layers left out of the count (those a recipe keeps in float by design).
        """
        family = PRECISION_FAMILIES.get(asked, frozenset({asked}))
        counted = [layer for layer in self.layers if layer.name not in excluding]
        total = sum(layer.macs for layer in counted) or 1
        return sum(layer.macs for layer in counted if layer.precision in family) / total

    def left_in_float(self) -> list[str]:
        """Names of the layers that do not run in INT8 (float or not found), largest first."""
        rest = [layer for layer in self.layers if layer.precision != "int8"]
        return [layer.name for layer in sorted(rest, key=lambda layer: -layer.macs)]

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``precision_audit`` record."""
        return {
            "backend": self.backend,
            "artifact": self.artifact,
            "method": self.method,
            "total_macs": self.total_macs,
            "shares": {name: round(share, 6) for name, share in self.shares().items()},
            "left_in_float": self.left_in_float(),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionAudit:
        return cls(
            backend=str(data["backend"]),
            artifact=str(data["artifact"]),
            method=str(data.get("method", "")),
            layers=tuple(
                LayerPrecision(
                    name=str(layer["name"]),
                    op_type=str(layer["op_type"]),
                    macs=int(layer["macs"]),
                    precision=str(layer["precision"]),
                    runs_as=str(layer["runs_as"]),
                )
                for layer in data["layers"]
            ),
        )

    def shares_text(self) -> str:
        """One line: ``int8 96.1%, fp32 3.9% of 1.23 M MACs on onnxruntime``."""
        parts = ", ".join(f"{name} {100 * share:.1f}%" for name, share in self.shares().items())
        return f"{parts} of {_macs_text(self.total_macs)} on {self.backend}"

    def to_text(self) -> str:
        lines = [f"precision audit of {self.artifact} ({self.method}): {self.shares_text()}"]
        if any(layer.precision == "int8" for layer in self.layers):
            floats = [layer for layer in self.layers if layer.precision != "int8"]
            if floats:
                shown = ", ".join(f"{layer.name} ({layer.precision})" for layer in floats[:8])
                more = f" and {len(floats) - 8} more" if len(floats) > 8 else ""
                lines.append(f"left in float: {shown}{more}")
        missing = [layer.name for layer in self.layers if layer.precision == "unknown"]
        if missing:
            lines.append(f"not found in the backend's layers: {', '.join(missing[:8])}")
        return "\n".join(lines)


def _macs_text(macs: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if macs >= size:
            return f"{macs / size:.2f} {unit} MACs"
    return f"{macs} MACs"


# --- the source model's layers -----------------------------------------------------------------------


def _batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {init.name for init in copy.graph.initializer}
    for graph_input in copy.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if graph_input.name not in initializers and dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    return copy


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(_batch_one(model))
    shapes: dict[str, tuple[int, ...]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(dim.HasField("dim_value") for dim in dims):
            shapes[info.name] = tuple(int(dim.dim_value) for dim in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(dim) for dim in init.dims)
    return shapes


def _weight_shape(
    model: onnx.ModelProto, name: str, shapes: Mapping[str, tuple[int, ...]]
) -> tuple[int, ...]:
    """The shape of a weight input, looking through a DequantizeLinear (Q/DQ graphs)."""
    if name in shapes:
        return shapes[name]
    producer = next((node for node in model.graph.node if name in node.output), None)
    if producer is not None and producer.op_type in ("DequantizeLinear", "Cast", "Identity"):
        return _weight_shape(model, producer.input[0], shapes)
    return ()


def _node_macs(model: onnx.ModelProto, node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    output = shapes.get(node.output[0], ())
    if not output:
        return 0
    if node.op_type == "Conv":
        weight = _weight_shape(model, node.input[1], shapes)
        return int(np.prod(output)) * int(np.prod(weight[1:])) if weight else 0
    first = shapes.get(node.input[0]) or _weight_shape(model, node.input[0], shapes)
    if not first:
        return 0
    transposed = any(a.name == "transA" and a.i for a in node.attribute)
    inner = first[-2] if node.op_type == "Gemm" and transposed else first[-1]
    return int(np.prod(output)) * int(inner)


def source_layers(model: onnx.ModelProto) -> list[SourceLayer]:
    """Every Conv/Gemm/MatMul of ``model`` with its MACs for one image, in graph order."""
    shapes = _shapes(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS or not node.name:
            continue
        aliases = [node.output[0]]
        tensor = node.output[0]
        for _ in range(6):  # follow the single-consumer elementwise chain a backend fuses
            users = consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type not in _CHAIN_OPS:
                break
            aliases += [users[0].name, users[0].output[0]]
            tensor = users[0].output[0]
        layers.append(
            SourceLayer(
                node.name, node.op_type, _node_macs(model, node, shapes), tuple(a for a in aliases if a)
            )
        )
    return layers


def find_source(artifact: Path) -> Path:
    """The ONNX an artifact was built from, for its layer list: the precision ONNX beside an ``.ort.onnx``, the
    artifact itself when it is a plain ONNX, else the ONNX beside it whose hash its manifest records."""
    if naming.is_optimized_onnx(artifact):
        precision = artifact.with_name(artifact.name[: -len(naming.OPTIMIZED_ONNX_SUFFIX)] + ".onnx")
        if precision.is_file():
            return precision
    elif artifact.suffix.lower() == ".onnx":
        return artifact
    manifest = matching_manifest(artifact)
    wanted = manifest.source_onnx_sha256 if manifest is not None else None
    if wanted:
        for candidate in sorted(artifact.parent.glob("*.onnx")):
            if not naming.is_optimized_onnx(candidate) and sha256_of_file(candidate) == wanted:
                return candidate
    raise BadInputError(
        f"cannot find the ONNX {artifact.name} was built from (for its layer list); pass source= the exported .onnx"
    )


# --- ONNX Runtime ------------------------------------------------------------------------------------


def _strip(name: str) -> str:
    name = name.removeprefix("InsertedPrecisionFreeCast_")
    name = re.sub(r"(_token_\d+)+$", "", name)
    return re.sub(r"_(nchwc|fused|nhwc)$", "", name)


def _tensor_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every tensor of an optimized graph, propagated in graph order."""
    types: dict[str, int] = {init.name: init.data_type for init in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types.setdefault(info.name, info.type.tensor_type.elem_type)
    for node in graph.node:
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            out_type = to
        elif node.op_type == "DequantizeLinear":
            out_type = types.get(node.input[1], onnx.TensorProto.FLOAT)
        elif node.op_type == "QuantizeLinear" or node.op_type in _INT8_OPS:
            zero_point = node.input[2] if len(node.input) > 2 else ""
            out_type = (
                types.get(zero_point, onnx.TensorProto.UINT8) if node.op_type == "QuantizeLinear" else 0
            )
        else:
            out_type = next((types[name] for name in node.input if name in types), 0)
        for output in node.output:
            if out_type and output not in types:
                types[output] = out_type
    return types


def onnxruntime_precisions(source: onnx.ModelProto, optimized: onnx.ModelProto) -> list[LayerPrecision]:
    """Map every source Conv/Gemm/MatMul onto the optimized graph's node that runs it, and that node's precision."""
    types = _tensor_types(optimized.graph)
    compute = [n for n in optimized.graph.node if n.op_type in _INT8_OPS | _FLOAT_COMPUTE_OPS]
    by_name: dict[str, onnx.NodeProto] = {}
    by_alias: dict[str, onnx.NodeProto] = {}
    for node in compute:
        by_name.setdefault(node.name, node)
        by_alias.setdefault(_strip(node.name), node)
        for output in node.output:
            by_alias.setdefault(output, node)
    results = []
    for layer in source_layers(source):
        match = by_name.get(layer.name) or by_alias.get(layer.name)
        for alias in layer.aliases:
            match = match or by_alias.get(alias)
        if match is None:
            results.append(LayerPrecision(layer.name, layer.op_type, layer.macs, "unknown", "not found"))
            continue
        if match.op_type in _INT8_OPS:
            precision = "int8"
        else:
            element = next((types[name] for name in match.input[:2] if name in types), 0)
            precision = _ONNX_TYPES.get(element, "unknown")
        label = f"{match.op_type} {match.name}" if match.name else match.op_type
        results.append(LayerPrecision(layer.name, layer.op_type, layer.macs, precision, label))
    return results


def audit_onnxruntime(
    artifact: str | Path,
    source: str | Path | onnx.ModelProto | None = None,
    providers: Sequence[str] | None = None,
    already_optimized: bool | None = None,
) -> PrecisionAudit:
    """Audit an ONNX Runtime artifact: its optimized graph as this ONNX Runtime writes it (or the ``.ort.onnx``).

    ``already_optimized``: the file is ONNX Runtime's optimized graph (default: judged by its ``.ort.onnx``
    name; pass True for a staged optimized graph under a temporary name). ``source``: the FP32 source's path,
    or its graph already read (a build hands the one it read).
    """
    from sedeploy.backends import onnxruntime as ort_backend

    path = Path(artifact)
    source_graph = (
        source
        if isinstance(source, onnx.ModelProto)
        else load_onnx(Path(source) if source else find_source(path))
    )
    if already_optimized if already_optimized is not None else naming.is_optimized_onnx(path):
        optimized, method = load_onnx(path), "ONNX Runtime optimized graph (.ort.onnx as saved)"
    else:
        with tempfile.TemporaryDirectory(prefix="sedeploy-audit-") as folder:
            staged = Path(folder) / "optimized.onnx"
            ort_backend.write_optimized_model(path, staged, list(providers or ["CPUExecutionProvider"]))
            optimized = onnx.load(str(staged))
        method = "ONNX Runtime optimized graph, level all"
    layers = onnxruntime_precisions(source_graph, optimized)
    return PrecisionAudit("onnxruntime", path.name, tuple(layers), method)


# --- OpenVINO ----------------------------------------------------------------------------------------


_OPENVINO_TYPES = {
    "u8": "int8",
    "i8": "int8",
    "u4": "int4",
    "i4": "int4",
    **FLOAT_TYPE_PRECISION,
    "f8e4m3": "fp8",
    "f8e5m2": "fp8",
}
"""OpenVINO's runtime precisions -> sedeploy's precision names (the float types from their one home)."""


def openvino_precisions(
    source: onnx.ModelProto, runtime_layers: Iterable[tuple[str, str, str, str]]
) -> list[LayerPrecision]:
    """Map source layers onto OpenVINO runtime layers given as (friendly name, layer type, runtime precision,
    comma-separated original layer names)."""
    by_alias: dict[str, tuple[str, str, str]] = {}
    for friendly, layer_type, precision, originals in runtime_layers:
        if layer_type in ("Reorder", "Input", "Parameter", "Output", "Result", "Const", "Constant"):
            continue
        for original in [friendly, *originals.split(",")]:
            original = original.strip()
            for key in (original, original.split("/")[0]):
                if key:
                    by_alias.setdefault(key, (friendly, layer_type, precision))
    results = []
    for layer in source_layers(source):
        match = by_alias.get(layer.name)
        for alias in layer.aliases[:1]:  # the output tensor names the layer when no node name survives
            match = match or by_alias.get(alias)
        if match is None:
            results.append(LayerPrecision(layer.name, layer.op_type, layer.macs, "unknown", "not found"))
            continue
        friendly, layer_type, precision = match
        results.append(
            LayerPrecision(
                layer.name,
                layer.op_type,
                layer.macs,
                _OPENVINO_TYPES.get(precision, precision),
                f"{layer_type} {friendly}",
            )
        )
    return results


def audit_openvino(artifact: str | Path, source: str | Path | None = None) -> PrecisionAudit:
    """Audit an OpenVINO IR as the runner compiles it (same device, hint and inference precision)."""
    from sedeploy.backends.openvino import OpenVinoRunner

    path = Path(artifact)
    source_path = Path(source) if source is not None else find_source(path)
    runner = OpenVinoRunner(path)
    with runner:
        # The runner's own compiled model, so the audit sees the precision hint a run gets.
        runtime = runner.runtime_model()
        provider = runner.provider
    layers = []
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()

        def value(key: str, info: Any = info) -> str:
            return str(info[key].astype(str)) if key in info else ""

        layers.append(
            (
                op.get_friendly_name(),
                value("layerType"),
                value("runtimePrecision"),
                value("originalLayersNames"),
            )
        )
    return PrecisionAudit(
        "openvino",
        path.name,
        tuple(openvino_precisions(load_onnx(source_path), layers)),
        f"OpenVINO runtime model, {provider}",
    )


# --- TensorRT ----------------------------------------------------------------------------------------


def _tensorrt_type(text: str) -> str:
    lowered = text.lower()
    for needle, precision in (
        ("int8", "int8"),
        ("fp8", "fp8"),
        ("bf16", "bf16"),
        ("fp16", "fp16"),
        ("half", "fp16"),
        ("fp32", "fp32"),
        ("float", "fp32"),
        ("int4", "int4"),
    ):
        if needle in lowered:
            return precision
    return "unknown"


def tensorrt_precisions(source: onnx.ModelProto, information: Mapping[str, Any]) -> list[LayerPrecision]:
    """Map source layers onto the layers of TensorRT's engine-inspector JSON (``Layers``).

    A layer's precision is the data type of its first input (``Format/Datatype``,
    e.g. "Thirty-two wide channel vectorized row major Int8 format"), else its
    weights' type. Without ``ProfilingVerbosity.DETAILED`` the inspector lists only
    layer names: those layers read ``unknown``.
    """
    by_alias: dict[str, tuple[str, str]] = {}
    for layer in information.get("Layers", []):
        if isinstance(layer, str):
            name, precision = layer, "unknown"
            metadata = ""
        else:
            name = str(layer.get("Name", ""))
            metadata = str(layer.get("Metadata", ""))
            inputs = layer.get("Inputs") or []
            first = inputs[0].get("Format/Datatype", "") if inputs and isinstance(inputs[0], Mapping) else ""
            precision = _tensorrt_type(str(first))
            if precision == "unknown" and isinstance(layer.get("Weights"), Mapping):
                precision = _tensorrt_type(str(layer["Weights"].get("Type", "")))
        keys = [part.strip() for part in name.split(" + ")]
        keys += re.findall(r"\[ONNX Layer: ([^\]]+)\]", metadata)
        for key in keys:
            by_alias.setdefault(key, (name, precision))
    results = []
    for layer in source_layers(source):
        match = by_alias.get(layer.name)
        for alias in layer.aliases:
            match = match or by_alias.get(alias)
        if match is None:
            results.append(LayerPrecision(layer.name, layer.op_type, layer.macs, "unknown", "not found"))
        else:
            results.append(LayerPrecision(layer.name, layer.op_type, layer.macs, match[1], match[0]))
    return results


def tensorrt_engine_information(engine_path: Path) -> dict[str, Any]:
    """The engine inspector's JSON for a serialized engine (needs TensorRT and a GPU)."""
    import tensorrt as trt

    from sedeploy.backends.tensorrt.compat import make_trt_logger

    runtime = trt.Runtime(make_trt_logger())
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise BadInputError(f"TensorRT cannot load engine {engine_path}; rebuild it on this machine")
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    information: dict[str, Any] = json.loads(text)
    return information


def audit_tensorrt(artifact: str | Path, source: str | Path | None = None) -> PrecisionAudit:
    """Audit a TensorRT engine from its inspector's per-layer JSON."""
    path = Path(artifact)
    source_path = Path(source) if source is not None else find_source(path)
    information = tensorrt_engine_information(path)
    return PrecisionAudit(
        "tensorrt",
        path.name,
        tuple(tensorrt_precisions(load_onnx(source_path), information)),
        "TensorRT engine inspector",
    )


AUDITORS: dict[str, Callable[..., PrecisionAudit]] = {
    "onnxruntime": audit_onnxruntime,
    "openvino": audit_openvino,
    "tensorrt": audit_tensorrt,
}
"""One audit function per backend, each ``(artifact, source=None) -> PrecisionAudit``."""


def audit(artifact: str | Path, source: str | Path | None = None) -> PrecisionAudit:
    """Audit ``artifact`` with its backend's function (picked by the file's kind)."""
    backend = naming.artifact_backend(artifact)
    if backend not in AUDITORS:
        raise ConfigError(
            f"{artifact} is a {backend} artifact; the audit reads .onnx, .xml and .engine/.plan files"
        )
    return AUDITORS[backend](artifact, source)


def audit_gate(
    asked: str,
    report: PrecisionAudit,
    min_share: float = DEFAULT_MIN_PRECISION_SHARE,
    intended_float: Collection[str] = (),
) -> None:
    """Raise :class:`PrecisionError` when ``asked`` precision covers less than ``min_share`` of the MACs.

    ``intended_float``: layers the recipe keeps in float on purpose (OpenVINO's stem on the raw pixels), left
    out of the share: the gate catches precision that was asked and silently not realised, not a recipe's
    own choice. FP32 always passes. The message is the one line a build prints.
    """
    if not 0.0 <= min_share <= 1.0:
        raise ConfigError(f"min_precision_share must be in [0, 1], got {min_share}")
    if asked == "fp32":
        return
    share = report.share_of(asked, intended_float)
    if share >= min_share:
        return
    others = [
        layer
        for layer in report.layers
        if layer.precision not in PRECISION_FAMILIES.get(asked, {asked}) and layer.name not in intended_float
    ]
    others.sort(key=lambda layer: -layer.macs)
    named = ", ".join(f"{layer.name} ({layer.precision})" for layer in others[:3])
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    if not others:
        named = f"the audit found no {asked} layer in this graph, and the rest"
    where = {
        "int8": "the cpu INT8 flavour runs int8 on ONNX Runtime, the tensorrt flavour on TensorRT",
        "fp16": "TensorRT and OpenVINO run fp16; ONNX Runtime's x86 CPU kernels do not",
    }.get(asked, f"one that runs {asked}")
    raise PrecisionError(
        f"asked {asked}, but only {100 * share:.0f}% of the MACs run in {asked} on {report.backend}: "
        f"{named}{more} do not; build for a backend that runs it ({where}), "
        f"or lower min_precision_share ({min_share})"
    )


def audit_failure(
    asked: str,
    report: PrecisionAudit,
    min_share: float = DEFAULT_MIN_PRECISION_SHARE,
    intended_float: Collection[str] = (),
) -> str | None:
    """The gate's one-line failure for ``report``, or None when the asked precision is realised (for verify/bench)."""
    try:
        audit_gate(asked, report, min_share, intended_float)
    except PrecisionError as error:
        return str(error)
    return None


def gate_applies(backend: str, recipe: Mapping[str, Any], precision: str = "", cuda: bool = False) -> bool:
    """Whether the asked precision is judged on ``backend``.

    Not for a tensorrt-flavour INT8 file on another backend, nor for an FP16 file on ONNX Runtime without
    CUDA: both are portable files for GPUs, and ONNX Runtime's CPU kernels run them in float (the build says
    so in a note instead of failing).
    """
    if recipe.get("flavour") == "tensorrt" and backend != "tensorrt":
        return False
    return not (precision == "fp16" and backend == "onnxruntime" and not cuda)


def format_shares(shares: Mapping[str, float]) -> str:
    """``int8 96%, fp32 4%``: MAC shares for a table cell."""
    return ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares.items())


def recorded_shares(artifact: str | Path) -> dict[str, float] | None:
    """The MAC shares the build recorded in the artifact's manifest (``precision_audit``), or None (cheap: for bench)."""
    manifest = matching_manifest(Path(artifact))
    record = getattr(manifest, "precision_audit", None) if manifest is not None else None
    if not isinstance(record, Mapping) or not isinstance(record.get("shares"), Mapping):
        return None
    return {str(name): float(share) for name, share in record["shares"].items()}
