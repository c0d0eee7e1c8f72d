"""What an artifact serves and Triton's model config for it: the machinery every serving command shares.

Two steps, apart from any file layout, so that ``sedeploy triton`` (which writes a
model repository), ``sedeploy serve`` (which binds the same tensors in PyTriton) and
their checks all read one description:

1. :func:`read_artifact` reads what an artifact serves: tensor names, data types
   and dims (ONNX from its graph and ``sedeploy.*`` metadata; a TensorRT plan, which
   cannot be opened without TensorRT, from its build manifest), the largest batch,
   the labels.
2. :func:`model_config` turns artifacts and :class:`ServingOptions` into a Triton
   ``ModelConfig`` as a plain dict (the field names of Triton's ``model_config.proto``);
   :func:`config_text` renders it as ``config.pbtxt`` and :func:`parse_config` reads one back, both
   through Triton's own protobuf schema, so a config that Triton would reject is never written.

The schema is ``tritonclient.grpc.model_config_pb2`` from the ``triton`` extra. The rule for a Triton model
name (:func:`check_model_name`) lives here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from sedeploy.artifacts.external_data import external_data_files
from sedeploy.artifacts.manifest import BuildManifest, ManifestError, checked_manifest, manifest_path
from sedeploy.artifacts.metadata import load_onnx, metadata_or_none
from sedeploy.artifacts.precision import graph_precision
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.optional import import_optional

EXTRA = "triton"
SCHEMA_MODULE = "tritonclient.grpc.model_config_pb2"
ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"
MODEL_FILES = {ONNX_PLATFORM: "model.onnx", PLAN_PLATFORM: "model.plan"}
"""The file name Triton looks for in a version folder, per platform."""
BACKEND_PLATFORMS = {"onnxruntime": ONNX_PLATFORM, "tensorrt": PLAN_PLATFORM}
"""A config may name the backend instead of the platform."""
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
KINDS = ("gpu", "cpu")
DEFAULT_QUEUE_DELAY_US = 100
"""How long Triton's dynamic batcher may hold a request to fill a batch: 0.1 ms costs little latency."""
TRT_WORKSPACE_BYTES = 1 << 30
"""Workspace for ONNX Runtime's TensorRT execution provider when ``--ort-trt-accelerator`` is on."""

_ONNX_TO_TRITON: dict[int, str] = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}
_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class TritonConfigError(BadInputError):
    """A ``config.pbtxt`` does not parse with Triton's ModelConfig schema."""


def check_model_name(name: str) -> None:
    """Refuse a Triton model name that is not a plain folder name (it names a folder of a repository)."""
    if not _MODEL_NAME.fullmatch(name):
        raise ConfigError(
            f"model name {name!r} may hold only letters, digits, '_', '-' and '.', and starts with a letter, "
            "digit or '_'",
            params=("name",),
        )


def schema() -> ModuleType:
    """Triton's ``model_config_pb2`` (ModelConfig and friends), from the ``triton`` extra."""
    return import_optional(SCHEMA_MODULE, EXTRA)


@dataclass(frozen=True)
class TensorConfig:
    """One model input or output as Triton sees it: dims exclude the batch dimension, -1 is dynamic."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> TensorConfig:
        """A tensor entry of a :func:`model_config` dict (or of :meth:`to_dict`) back as a :class:`TensorConfig`."""
        return cls(str(entry["name"]), str(entry["data_type"]), tuple(int(d) for d in entry["dims"]))


@dataclass(frozen=True)
class ServingArtifact:
    """What one artifact serves, read from the artifact itself (and its manifest where it has one)."""

    path: Path
    platform: str
    precision: str
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    max_batch: int
    labels: tuple[str, ...] | None = None
    label_output: str | None = None
    input_layout: str | None = None
    arch: str | None = None
    manifest: BuildManifest | None = None
    data_files: tuple[str, ...] = ()
    """An ONNX's external data files, relative to its folder as the model names them (checked: inside it)."""

    @property
    def model_filename(self) -> str:
        """The file name inside a Triton version folder: ``model.onnx`` or ``model.plan``."""
        return MODEL_FILES[self.platform]

    @property
    def flavour(self) -> str | None:
        """The INT8 flavour (``tensorrt`` or ``cpu``) when the manifest records one."""
        return self.manifest.recipe.get("flavour") if self.manifest else None

    def default_name(self) -> str:
        """A Triton model name: the zoo architecture, else the file name up to its first dot."""
        raw = self.arch.rsplit(":", 1)[-1] if self.arch else self.path.name.split(".")[0]
        return _NAME_CHARACTERS.sub("_", raw).strip("._-") or "model"


def _onnx_tensor(value: onnx.ValueInfoProto, source: Path) -> tuple[TensorConfig, bool]:
    """The tensor without its first dimension, and whether that first dimension is dynamic."""
    tensor_type = value.type.tensor_type
    data_type = _ONNX_TO_TRITON.get(tensor_type.elem_type)
    if data_type is None:
        raise BadInputError(
            f"{source}: tensor {value.name!r} has ONNX element type {tensor_type.elem_type}, "
            "which Triton cannot serve; export it again"
        )
    dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
    if not dims:
        raise BadInputError(
            f"{source}: tensor {value.name!r} has no shape; export it again with a batch axis"
        )
    return TensorConfig(value.name, data_type, tuple(dims[1:])), dims[0] == -1


def _read_onnx(path: Path, manifest: BuildManifest | None) -> ServingArtifact:
    proto = load_onnx(path)
    metadata = metadata_or_none(proto)
    initializers = {init.name for init in proto.graph.initializer}
    inputs: list[TensorConfig] = []
    outputs: list[TensorConfig] = []
    batched: list[bool] = []
    for values, into in ((proto.graph.input, inputs), (proto.graph.output, outputs)):
        for value in values:
            if value.name in initializers:
                continue
            tensor, dynamic_batch = _onnx_tensor(value, path)
            into.append(tensor)
            batched.append(dynamic_batch)
    if not all(batched):
        raise BadInputError(
            f"{path} has a tensor without a dynamic batch dimension; export it again with `sedeploy export`"
        )
    if metadata is None:
        raise BadInputError(
            f"{path} has no sedeploy metadata (largest batch, labels); export it with `sedeploy export`"
        )
    return ServingArtifact(
        path=path,
        platform=ONNX_PLATFORM,
        precision=manifest.precision if manifest else graph_precision(proto),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        max_batch=metadata.max_batch,
        labels=metadata.labels,
        label_output=metadata.output_name,
        input_layout=metadata.input_layout,
        arch=metadata.arch,
        manifest=manifest,
        data_files=external_data_files(proto, path),
    )


def _read_plan(path: Path, manifest: BuildManifest) -> ServingArtifact:
    """A TensorRT plan described by its manifest: FP32 input and output (precision lives inside the plan)."""
    source = manifest.source_metadata
    profile: Any = (manifest.engine or {}).get("profile")
    try:
        channels, height, width = (int(v) for v in source["input_size"])
        num_classes = int(source["num_classes"])
        low, high = int(profile["min"]), int(profile["max"])
        input_name, output_name = str(source["input_name"]), str(source["output_name"])
    except (KeyError, TypeError, ValueError):
        raise ManifestError(
            f"manifest of {path} lacks the engine profile or the source metadata; rebuild the engine"
        ) from None
    if low > 1:
        raise BadInputError(
            f"{path} was built for batches {low}..{high}, but Triton sends batches from 1; "
            f"rebuild it with `sedeploy build-engine --batch-profile 1:OPT:{high}`"
        )
    labels = source.get("labels")
    return ServingArtifact(
        path=path,
        platform=PLAN_PLATFORM,
        precision=manifest.precision,
        inputs=(TensorConfig(input_name, "TYPE_FP32", (channels, height, width)),),
        outputs=(TensorConfig(output_name, "TYPE_FP32", (num_classes,)),),
        max_batch=high,
        labels=tuple(str(label) for label in labels) if labels else None,
        label_output=output_name,
        input_layout=source.get("input_layout"),
        arch=source.get("arch"),
        manifest=manifest,
    )


def read_artifact(path: str | os.PathLike[str]) -> ServingArtifact:
    """What ``path`` (an ONNX file, or a TensorRT engine with its manifest) serves.

    A manifest beside the file must match its bytes; an engine without one is
    refused, since its tensors cannot be read without TensorRT.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"artifact {path} does not exist; build one with `sedeploy build-engine`")
    manifest = checked_manifest(path)
    if manifest is not None and manifest.artifact_format == PLAN_PLATFORM:
        return _read_plan(path, manifest)
    if manifest is None and path.suffix.lower() != ".onnx":
        raise BadInputError(
            f"{path} is not an .onnx file and has no build manifest beside it ({manifest_path(path).name}); "
            "a TensorRT engine needs the manifest sedeploy build-engine writes"
        )
    return _read_onnx(path, manifest)


@dataclass(frozen=True)
class ServingOptions:
    """How Triton should serve a model: batching, instances, device kind, acceleration."""

    max_batch: int | None = None
    """Largest batch Triton forms; default: the artifact's (engine profile MAX or the ONNX's max batch)."""
    preferred_batch: tuple[int, ...] = ()
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    kind: str | None = None
    """``gpu`` or ``cpu``; default gpu, except cpu for an ONNX of the INT8 ``cpu`` flavour."""
    ort_trt_accelerator: bool = False
    """ONNX on GPU only: let ONNX Runtime hand the graph to TensorRT (execution-accelerators block)."""

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"unknown instance kind {self.kind!r}; valid values: {', '.join(KINDS)}")
        if self.instances < 1:
            raise ConfigError(f"instances must be at least 1, got {self.instances}", params=("instances",))
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be 0 or more, got {self.max_queue_delay_us}")
        if any(size < 1 for size in self.preferred_batch):
            raise ConfigError(f"preferred batch sizes must be at least 1, got {list(self.preferred_batch)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_batch": self.max_batch,
            "preferred_batch": list(self.preferred_batch),
            "max_queue_delay_us": self.max_queue_delay_us,
            "instances": self.instances,
            "kind": self.kind,
            "ort_trt_accelerator": self.ort_trt_accelerator,
        }


def _same_interface(artifacts: Sequence[ServingArtifact]) -> None:
    """Versions share one config: refuse artifacts whose platform, tensors or labels differ."""
    first = artifacts[0]
    for other in artifacts[1:]:
        for what, mine, theirs in (
            ("platform", first.platform, other.platform),
            ("inputs", first.inputs, other.inputs),
            ("outputs", first.outputs, other.outputs),
            ("labels", first.labels, other.labels),
        ):
            if mine != theirs:
                raise ConfigError(
                    f"{first.path.name} and {other.path.name} differ in {what}, so they cannot be versions of "
                    "one Triton model; give --per-precision or run sedeploy triton once per artifact"
                )


def _instance_kind(artifacts: Sequence[ServingArtifact], options: ServingOptions) -> str:
    first = artifacts[0]
    kind = options.kind or ("cpu" if first.platform == ONNX_PLATFORM and first.flavour == "cpu" else "gpu")
    if kind == "cpu" and first.platform == PLAN_PLATFORM:
        raise ConfigError("a TensorRT engine runs only on a GPU; drop kind cpu", params=("kind",))
    return kind


def _accelerator(artifacts: Sequence[ServingArtifact], kind: str) -> dict[str, Any]:
    """ONNX Runtime's TensorRT execution provider, at the artifacts' precision."""
    if artifacts[0].platform != ONNX_PLATFORM or kind != "gpu":
        raise ConfigError("ort_trt_accelerator is for an ONNX model on GPU instances; drop it")
    precisions = {artifact.precision for artifact in artifacts}
    if len(precisions) > 1:
        raise ConfigError(
            f"ort_trt_accelerator needs one precision per model, got {sorted(precisions)}; give per_precision"
        )
    if any(artifact.flavour == "cpu" for artifact in artifacts):
        raise ConfigError(
            "ort_trt_accelerator: the INT8 cpu flavour (unsigned activations) does not run on TensorRT; "
            "build with `sedeploy build-engine --target tensorrt`"
        )
    return {
        "execution_accelerators": {
            "gpu_execution_accelerator": [
                {
                    "name": "tensorrt",
                    "parameters": {
                        "precision_mode": precisions.pop().upper(),
                        "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
                    },
                }
            ]
        }
    }


def model_config(
    artifacts: Sequence[ServingArtifact], name: str, options: ServingOptions | None = None
) -> dict[str, Any]:
    """Triton's ModelConfig for ``artifacts`` (versions of one model) as a dict of ``model_config.proto`` fields.

    Tensors, data types, dims and the largest batch come from the artifacts; the
    batching, instance and acceleration settings from ``options``.
    """
    options = options or ServingOptions()
    if not artifacts:
        raise ConfigError("give at least one artifact")
    _same_interface(artifacts)
    first = artifacts[0]
    largest = min(artifact.max_batch for artifact in artifacts)
    max_batch = options.max_batch or largest
    if max_batch > largest:
        raise ConfigError(
            f"max_batch {max_batch} exceeds what the artifacts serve ({largest}); give at most {largest}"
        )
    too_large = [size for size in options.preferred_batch if size > max_batch]
    if too_large:
        raise ConfigError(f"preferred batch sizes {too_large} exceed the max batch {max_batch}; lower them")
    kind = _instance_kind(artifacts, options)

    inputs = []
    for tensor in first.inputs:
        entry = tensor.to_dict()
        if first.input_layout == "NCHW" and len(tensor.dims) == 3:
            entry["format"] = "FORMAT_NCHW"
        inputs.append(entry)
    outputs = []
    for tensor in first.outputs:
        entry = tensor.to_dict()
        if first.labels and tensor.name == first.label_output:
            entry["label_filename"] = LABELS_FILE
        outputs.append(entry)
    batching: dict[str, Any] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    if options.preferred_batch:
        batching["preferred_batch_size"] = sorted(set(options.preferred_batch))
    config: dict[str, Any] = {
        "name": name,
        "platform": first.platform,
        "max_batch_size": max_batch,
        "input": inputs,
        "output": outputs,
        "dynamic_batching": batching,
        "instance_group": [{"count": options.instances, "kind": f"KIND_{kind.upper()}"}],
    }
    if options.ort_trt_accelerator:
        config["optimization"] = _accelerator(artifacts, kind)
    return config


def parse_config(text: str, source: str = "config.pbtxt") -> Any:
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig`` message; :class:`TritonConfigError` if malformed."""
    from google.protobuf import text_format

    message = schema().ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise TritonConfigError(
            f"{source} does not parse with Triton's ModelConfig schema ({error}); fix or regenerate it"
        ) from None
    return message


def config_message(config: dict[str, Any]) -> Any:
    """The ``ModelConfig`` message of a :func:`model_config` dict (unknown fields are an error)."""
    from google.protobuf import json_format

    try:
        return json_format.ParseDict(config, schema().ModelConfig())
    except json_format.ParseError as error:
        raise TritonConfigError(f"not a valid Triton ModelConfig ({error})") from None


def config_text(config: dict[str, Any]) -> str:
    """``config.pbtxt`` text for a :func:`model_config` dict, rendered by Triton's schema."""
    from google.protobuf import text_format

    return str(text_format.MessageToString(config_message(config)))
