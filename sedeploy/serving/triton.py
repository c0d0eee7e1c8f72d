"""``sedeploy triton``: a Triton Inference Server model repository for an engine or ONNX model.

Three separate steps, so that a serving front end (PyTriton, issue 12) can reuse
the first two without the file layout:

1. :func:`read_artifact` reads what an artifact serves: tensor names, data types
   and dims (ONNX from its graph and ``sedeploy.*`` metadata; a TensorRT plan, which
   cannot be opened without TensorRT, from its build manifest), the largest batch,
   the labels.
2. :func:`model_config` turns artifacts and :class:`ServingOptions` into a Triton
   ``ModelConfig`` as a plain dict (the field names of Triton's ``model_config.proto``);
   :func:`config_text` renders it as ``config.pbtxt`` through Triton's own protobuf
   schema, so a config that Triton would reject is never written.
3. :func:`write_repository` lays out ``<repo>/<name>/config.pbtxt``,
   ``<repo>/<name>/<version>/model.onnx|model.plan`` (with the build manifest copied
   beside it, and an ONNX's external data files at the paths the model names) and
   ``labels.txt``; :func:`check_repository` validates a repository
   against Triton's schema and against the model files.

The schema is ``tritonclient.grpc.model_config_pb2`` from the ``triton`` extra.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from sedeploy.artifacts.external_data import external_data_files
from sedeploy.artifacts.manifest import BuildManifest, ManifestError, checked_manifest, manifest_path
from sedeploy.artifacts.metadata import load_onnx, metadata_or_none
from sedeploy.artifacts.naming import OPTIMIZED_ONNX_SUFFIX, is_optimized_onnx
from sedeploy.artifacts.precision import graph_precision
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import atomic_output, sha256_of_file
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

EXTRA = "triton"
SCHEMA_MODULE = "tritonclient.grpc.model_config_pb2"
ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"
MODEL_FILES = {ONNX_PLATFORM: "model.onnx", PLAN_PLATFORM: "model.plan"}
"""The file name Triton looks for in a version folder, per platform."""
_BACKEND_PLATFORMS = {"onnxruntime": ONNX_PLATFORM, "tensorrt": PLAN_PLATFORM}
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
_MODEL_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class TritonConfigError(BadInputError):
    """A ``config.pbtxt`` does not parse with Triton's ModelConfig schema."""


class ModelExistsError(BadInputError):
    """The repository already holds a different model of the same name."""


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
        return _MODEL_NAME.sub("_", raw).strip("._") or "model"


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


@dataclass(frozen=True)
class WrittenModel:
    """One model folder of a repository that :func:`write_repository` wrote."""

    name: str
    folder: Path
    versions: tuple[int, ...]
    artifacts: tuple[Path, ...]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "versions": list(self.versions),
            "artifacts": [str(path) for path in self.artifacts],
            "config": self.config,
        }


@dataclass(frozen=True)
class RepositoryResult:
    """What :func:`write_repository` wrote."""

    repository: Path
    models: tuple[WrittenModel, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"repository": str(self.repository), "models": [model.to_dict() for model in self.models]}

    def to_text(self) -> str:
        lines = []
        for model in self.models:
            config = model.config
            lines.append(
                f"{model.folder}: {config['platform']}, versions {', '.join(map(str, model.versions))}, "
                f"max batch {config['max_batch_size']}, "
                f"{config['instance_group'][0]['count']} x {config['instance_group'][0]['kind']}"
            )
        lines.append(f"start Triton with: tritonserver --model-repository={self.repository}")
        return "\n".join(lines)


def _version_files(artifact: ServingArtifact) -> dict[str, Path]:
    """The files one version folder holds: the model, its manifest when there is one, its external data files.

    The data files keep the relative paths the model names, so Triton finds them
    beside the copy as ONNX Runtime finds them beside the original.
    """
    files = {artifact.model_filename: artifact.path}
    if artifact.manifest is not None:
        files[artifact.model_filename + ".manifest.json"] = manifest_path(artifact.path)
    for location in artifact.data_files:
        if os.path.normpath(location) in files:
            raise BadInputError(
                f"{artifact.path} keeps external data in {location!r}, the name its copy takes in a Triton "
                "version folder; save the data under another name (onnx.save_model(..., location=...))"
            )
        files[Path(location).as_posix()] = artifact.path.parent / location
    return files


def _model_files(config: dict[str, Any], artifacts: dict[int, ServingArtifact]) -> dict[str, Path | str]:
    """Every file of a model folder, relative to it: a source path to copy, or text to write."""
    files: dict[str, Path | str] = {CONFIG_FILE: config_text(config)}
    labels = next(iter(artifacts.values())).labels
    if labels and any("\n" in label or "\r" in label for label in labels):
        raise BadInputError("a class label holds a line break, which labels.txt cannot carry; export again")
    if labels:
        files[LABELS_FILE] = "\n".join(labels) + "\n"
    for version, artifact in artifacts.items():
        for name, source in _version_files(artifact).items():
            files[f"{version}/{name}"] = source
    return files


def _holds_same(folder: Path, files: dict[str, Path | str]) -> bool:
    """True when ``folder`` already holds these config and labels and no other bytes under these names."""
    for relative, content in files.items():
        target = folder / relative
        if isinstance(content, str):
            if not target.is_file() or target.read_text(encoding="utf-8") != content:
                return False
        elif target.exists() and (
            not target.is_file()
            or target.stat().st_size != content.stat().st_size
            or sha256_of_file(target) != sha256_of_file(content)
        ):
            return False
    return True


def _write_files(folder: Path, files: dict[str, Path | str]) -> None:
    for relative, content in files.items():
        with atomic_output(folder / relative) as temp_path:
            if isinstance(content, str):
                temp_path.write_text(content, encoding="utf-8")
            else:
                shutil.copyfile(content, temp_path)


def _place_model(folder: Path, files: dict[str, Path | str], force: bool) -> None:
    """Write a model folder: a new or replaced one whole (built aside, then renamed), else only what is new.

    A write that fails (a full disk, a file size limit) leaves the folder as it was and no staging
    folder behind, and is one :class:`BadInputError` naming where it failed.
    """
    try:
        _place_model_files(folder, files, force)
    except OSError as error:
        where = error.filename or folder
        raise BadInputError(
            f"cannot write the Triton model {folder.name} at {where} ({error.strerror or error}); "
            "free disk space there or choose another output",
            params=("output",),
        ) from None


def _place_model_files(folder: Path, files: dict[str, Path | str], force: bool) -> None:
    if folder.exists() and not force:
        if not folder.is_dir() or not _holds_same(folder, files):
            raise ModelExistsError(
                f"{folder} already holds a different model named {folder.name!r}; "
                "give force=True to replace it, or another name",
                params=("name",),
            )
        _write_files(
            folder, {name: content for name, content in files.items() if not (folder / name).exists()}
        )
        return
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    retired = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.old")
    try:
        _write_files(staging, files)
        if folder.exists():
            os.replace(folder, retired)
        try:
            os.replace(staging, folder)
        except BaseException:
            if retired.exists():  # the old model goes back: a failed replace changes nothing
                os.replace(retired, folder)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def write_repository(
    artifacts: Sequence[str | os.PathLike[str]],
    repository: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: int = 1,
    per_precision: bool = False,
    options: ServingOptions | None = None,
    force: bool = False,
) -> RepositoryResult:
    """Lay out a Triton model repository serving ``artifacts``.

    Several artifacts become versions ``version, version + 1, ...`` of one model,
    or with ``per_precision`` one model each, named ``<name>_<precision>``. A model
    folder that already holds something else is replaced only with ``force``;
    re-running with the same artifacts and settings, or adding a new version
    under the same config, is allowed.
    """
    if not artifacts:
        raise ConfigError("give at least one artifact (an .onnx or an engine built by sedeploy build-engine)")
    if version < 1:
        raise ConfigError(f"version must be at least 1, got {version}", params=("version",))
    if name is not None and (not name or _MODEL_NAME.search(name) or name.startswith(".")):
        raise ConfigError(f"model name {name!r} may hold only letters, digits, '_', '-' and '.'")
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise BadInputError(f"{repository} is a file; give a folder for the model repository")
    options = options or ServingOptions()
    for path in artifacts:
        if is_optimized_onnx(Path(path)):
            portable = Path(path).with_name(Path(path).name[: -len(OPTIMIZED_ONNX_SUFFIX)] + ".onnx")
            raise ConfigError(
                f"{path} is ONNX Runtime's graph optimized for this machine's kind of device, not a file for "
                f"another server; give the portable {portable.name} beside it (Triton's ONNX Runtime optimizes it there)"
            )
    served = [read_artifact(path) for path in artifacts]
    base = name or served[0].default_name()

    groups: dict[str, dict[int, ServingArtifact]] = {}
    if per_precision:
        for artifact in served:
            model_name = f"{base}_{artifact.precision}"
            if model_name in groups:
                raise ConfigError(
                    f"two artifacts are {artifact.precision}; per_precision serves one per precision"
                )
            groups[model_name] = {version: artifact}
    else:
        groups[base] = {version + index: artifact for index, artifact in enumerate(served)}

    planned = []
    for model_name, versions in groups.items():
        config = model_config(list(versions.values()), model_name, options)
        planned.append((model_name, versions, config, _model_files(config, versions)))
    written = []
    for model_name, versions, config, files in planned:
        folder = repository / model_name
        _place_model(folder, files, force)
        logger.info("wrote Triton model %s (versions %s)", folder, sorted(versions))
        written.append(
            WrittenModel(
                model_name,
                folder,
                tuple(sorted(versions)),
                tuple(artifact.path for artifact in versions.values()),
                config,
            )
        )
    return RepositoryResult(repository, tuple(written))


@dataclass
class ModelCheck:
    """The findings for one model folder: ``problems`` make Triton fail or serve wrongly, ``notes`` do not."""

    name: str
    versions: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "versions": self.versions, "problems": self.problems, "notes": self.notes}


@dataclass(frozen=True)
class RepositoryCheck:
    """The result of :func:`check_repository`."""

    repository: Path
    models: tuple[ModelCheck, ...]

    @property
    def ok(self) -> bool:
        return bool(self.models) and not any(model.problems for model in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "ok": self.ok,
            "models": [m.to_dict() for m in self.models],
        }

    def to_text(self) -> str:
        if not self.models:
            return f"{self.repository}: no model folders"
        lines = []
        for model in self.models:
            status = "ok" if not model.problems else f"{len(model.problems)} problem(s)"
            lines.append(f"{model.name}: {status} (versions {', '.join(map(str, model.versions)) or 'none'})")
            lines.extend(f"  problem: {problem}" for problem in model.problems)
            lines.extend(f"  note: {note}" for note in model.notes)
        return "\n".join(lines)


def _is_onnx(path: Path) -> bool:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return bool(proto.graph.node) and proto.ir_version > 0


def _tensors(messages: Any) -> dict[str, TensorConfig]:
    names = schema().DataType.Name
    return {m.name: TensorConfig(m.name, names(m.data_type), tuple(m.dims)) for m in messages}


def _compare_tensors(
    kind: str, configured: dict[str, TensorConfig], actual: tuple[TensorConfig, ...]
) -> list[str]:
    problems = []
    actual_by_name = {tensor.name: tensor for tensor in actual}
    for missing in sorted(set(actual_by_name) - set(configured)):
        problems.append(f"the model's {kind} {missing!r} is not in config.pbtxt")
    for extra in sorted(set(configured) - set(actual_by_name)):
        problems.append(f"config.pbtxt names {kind} {extra!r}, which the model does not have")
    for tensor_name in sorted(set(configured) & set(actual_by_name)):
        mine, theirs = configured[tensor_name], actual_by_name[tensor_name]
        if mine.data_type != theirs.data_type:
            problems.append(
                f"{kind} {tensor_name!r}: config says {mine.data_type}, model has {theirs.data_type}"
            )
        compatible = len(mine.dims) == len(theirs.dims) and all(
            want in (-1, have) or have == -1 for want, have in zip(mine.dims, theirs.dims, strict=True)
        )
        if not compatible:
            problems.append(
                f"{kind} {tensor_name!r}: config dims {list(mine.dims)} disagree with the model's {list(theirs.dims)}"
            )
    return problems


def _check_version(
    folder: Path, version: str, platform: str, filename: str, check: ModelCheck
) -> ServingArtifact | None:
    """Check one version folder's model file against the config; returns what the file serves if readable."""
    path = folder / version / filename
    prefix = f"version {version}"
    if not path.is_file():
        others = [name for name in MODEL_FILES.values() if (folder / version / name).is_file()]
        hint = f" (it holds {others[0]}: is the platform right?)" if others else ""
        check.problems.append(f"{prefix}: {filename} is missing{hint}")
        return None
    onnx_file = _is_onnx(path)
    if platform == PLAN_PLATFORM and onnx_file:
        check.problems.append(f"{prefix}: {filename} is an ONNX model but the platform is {PLAN_PLATFORM}")
        return None
    if platform == ONNX_PLATFORM and not onnx_file:
        check.problems.append(
            f"{prefix}: {filename} is not an ONNX model but the platform is {ONNX_PLATFORM}"
        )
        return None
    if platform == PLAN_PLATFORM and not manifest_path(path).is_file():
        check.notes.append(f"{prefix}: no build manifest beside {filename}; its tensors cannot be checked")
        return None
    try:
        return read_artifact(path)
    except BadInputError as error:
        check.problems.append(f"{prefix}: {error}")
        return None


def _check_model(folder: Path) -> ModelCheck:
    check = ModelCheck(folder.name)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        check.problems.append(f"{CONFIG_FILE} is missing")
        return check
    try:
        config = parse_config(config_path.read_text(encoding="utf-8"), str(config_path))
    except (TritonConfigError, UnicodeDecodeError) as error:
        check.problems.append(str(error))
        return check
    if config.name and config.name != folder.name:
        check.problems.append(f"config name {config.name!r} differs from the folder name {folder.name!r}")
    versions = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    check.versions = [int(v) for v in versions]
    if not versions:
        check.problems.append(f"no version folder (such as {folder.name}/1/) holds a model")
    platform = config.platform or _BACKEND_PLATFORMS.get(config.backend, "")
    if platform not in MODEL_FILES:
        check.notes.append(f"platform {config.platform or config.backend!r} is not one sedeploy checks")
        return check
    filename = config.default_model_filename or MODEL_FILES[platform]
    inputs, outputs = _tensors(config.input), _tensors(config.output)
    for version in versions:
        artifact = _check_version(folder, version, platform, filename, check)
        if artifact is None:
            continue
        check.problems.extend(
            f"version {version}: {p}" for p in _compare_tensors("input", inputs, artifact.inputs)
        )
        check.problems.extend(
            f"version {version}: {p}" for p in _compare_tensors("output", outputs, artifact.outputs)
        )
        if config.max_batch_size > artifact.max_batch:
            check.problems.append(
                f"version {version}: max_batch_size {config.max_batch_size} exceeds the model's {artifact.max_batch}"
            )
    for output in config.output:
        if output.label_filename:
            labels_path = folder / output.label_filename
            if not labels_path.is_file():
                check.problems.append(
                    f"output {output.name!r}: label file {output.label_filename} is missing"
                )
            elif output.dims:
                count = len([line for line in labels_path.read_text(encoding="utf-8").splitlines() if line])
                if count != output.dims[-1]:
                    check.problems.append(
                        f"{output.label_filename} has {count} labels but output {output.name!r} has {output.dims[-1]}"
                    )
    return check


def check_repository(repository: str | os.PathLike[str]) -> RepositoryCheck:
    """Validate every model folder of a repository: its config against Triton's schema, its files against the config."""
    repository = Path(repository)
    if not repository.exists():
        raise BadInputError(f"model repository {repository} does not exist; give the folder given to -o")
    if not repository.is_dir():
        raise BadInputError(f"model repository {repository} is not a folder; give the folder given to -o")
    folders = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    return RepositoryCheck(repository, tuple(_check_model(folder) for folder in folders))
