"""The source a build starts from, read once (:class:`SourceModel`), and what it cannot be asked for."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from sedeploy.artifacts.manifest import (
    matching_manifest,
)
from sedeploy.artifacts.metadata import ModelMetadata, load_onnx, metadata_or_none
from sedeploy.artifacts.module_names import module_name, read_module_names
from sedeploy.artifacts.precision import graph_precision
from sedeploy.artifacts.qat_export import QatExport, read_qat_export
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import sha256_of_file
from sedeploy.precision.placement import placement_of

if TYPE_CHECKING:
    from sedeploy.building.options import BuildOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceModel:
    """The ONNX a build starts from, read once: path, parsed graph, metadata, sha256 and precision.

    Handed down through :func:`build_engine` so no step re-reads or re-hashes the file.
    """

    path: Path
    proto: onnx.ModelProto
    metadata: ModelMetadata | None
    sha256: str
    precision: str
    qat: QatExport | None = None
    """A quantization-aware export's own record (``sedeploy.qat``): an INT8 file the build takes as it is."""

    @property
    def builds_qat(self) -> bool:
        """An INT8 build of a QAT export: no calibration, its learned scales as they are, gated on its float twin."""
        return self.qat is not None and self.precision == "int8"

    @property
    def input_name(self) -> str:
        return self.metadata.input_name if self.metadata else graph_input_name(self.proto)


def read_source(model_path: Path) -> SourceModel:
    """The source ONNX and its metadata; a graph input that contradicts the metadata is refused."""
    proto = load_onnx(model_path)
    metadata = metadata_or_none(proto)
    if metadata is not None:
        graph_input = next(i for i in proto.graph.input if i.name == graph_input_name(proto))
        shape = [dim.dim_value or dim.dim_param or None for dim in graph_input.type.tensor_type.shape.dim]
        problem = metadata.input_mismatch(graph_input.name, shape)
        if problem is not None:
            raise BadInputError(f"{model_path}: {problem}; export it again with sedeploy export")
    manifest = matching_manifest(model_path)
    precision = manifest.precision if manifest is not None else graph_precision(proto)
    # A built artifact (a manifest describes it) carries its QAT export's key but is no export to build from.
    qat = read_qat_export(proto, str(model_path)) if manifest is None else None
    return SourceModel(model_path, proto, metadata, sha256_of_file(model_path), precision, qat)


def refuse_what_cannot_apply(source: SourceModel, options: BuildOptions) -> None:
    """Options that this source cannot honour are refused, never dropped."""
    if source.builds_qat and options.precision == "int8":
        refuse_what_qat_fixes(source, options)
    elif source.precision != "fp32" and options.precision != "fp32":
        start = fp32_source_name(source)
        raise ConfigError(
            f"{source.path} is already {source.precision}; build {options.precision} from the FP32 export "
            f"({start}), or build this file as it is without fp16/int8"
        )
    split = dla_split(source, options)
    if split is not None:
        raise ConfigError(split, params=("every_tensor_int8", "gpu_fallback"))
    metadata = source.metadata
    overrides = options.preprocessing_overrides
    if metadata is not None:
        fixed = {"img_size": tuple(metadata.input_size[1:]), "channels": metadata.input_size[0]}
        for name, value in overrides.items():
            given = tuple(value) if name == "img_size" and value is not None else value
            if name in fixed and given is not None and given != fixed[name]:
                shown = "x".join(map(str, given)) if isinstance(given, tuple) else given
                raise ConfigError(
                    f"{name} {shown} contradicts {source.path}'s metadata (its input is "
                    f"{'x'.join(map(str, metadata.input_size))}, fixed at export); drop {name}, or export the model "
                    "again at that size",
                    params=("channels",),
                )


DLA_SPLIT_OPS = ("Gemm", "MatMul", "Sigmoid", "HardSigmoid")
"""The head and SE-gate layers that a recipe without every-tensor INT8 leaves float: where a DLA region ends."""


def dla_split(source: SourceModel, options: BuildOptions) -> str | None:
    """Why a DLA build would split this INT8 network into several regions (None: it runs as one, or the user
    allowed the split with ``gpu_fallback``). The DLA needs an INT8 scale on every tensor: a float SE gate or head
    ends its region, and without GPU fallback TensorRT refuses what it cannot place. An INT8 file is judged by
    its own graph (layers read without Q/DQ); an INT8 build from FP32 by ``every_tensor_int8``."""
    if options.tensorrt.dla_core is None or options.tensorrt.gpu_fallback:
        return None
    if options.precision == "int8" and not source.builds_qat:
        if options.every_tensor_int8:
            return None
        floats = "the head (and, unless the SE path is quantized, the SE gate)"
        fix = "build with every_tensor_int8"
    elif source.precision == "int8":
        quantized = set(placement_of(source.proto).quantized_nodes)
        names = read_module_names(source.proto)
        left = [
            module_name(names, node.name)
            for node in source.proto.graph.node
            if node.op_type in DLA_SPLIT_OPS and node.name not in quantized
        ]
        if not left:
            return None
        floats = ", ".join(dict.fromkeys(left[:3])) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        fix = (
            "fine-tune again with every_tensor_int8 (train qat)"
            if source.qat is not None
            else "build the INT8 file with every_tensor_int8"
        )
    else:
        return None
    return (
        f"dla_core {options.tensorrt.dla_core}: this INT8 network keeps {floats} in float, and the DLA runs only "
        f"tensors with INT8 scales in one region, so TensorRT would split the network at each float layer; {fix}, "
        "or give gpu_fallback to accept the split"
    )


QAT_FIXED_OPTIONS = (
    "calib_method",
    "percentile",
    "quantize_se",
    "high_precision",
    "every_tensor_int8",
    "implicit_int8",
    "recalibrate",
    "sweep_data",
)
"""Build options a QAT export has settled already (its recipe, its learned scales): refused with it."""


def refuse_what_qat_fixes(source: SourceModel, options: BuildOptions) -> None:
    """A QAT export builds INT8 as it is: its flavour and scales are the fine-tuning's, so recipe options are refused."""
    assert source.qat is not None
    defaults = type(options).__dataclass_fields__
    given = [name for name in QAT_FIXED_OPTIONS if getattr(options, name) != defaults[name].default]
    flavour = source.qat.flavour
    if options.target is not None and options.target != flavour:
        given.insert(0, "target")
    if options.calib_dir is None and options.calib_size != defaults["calib_size"].default:
        given.append(
            "calib_size"
        )  # it limits calib_dir's images, which judge a QAT export in place of its own
    if given:
        raise ConfigError(
            f"{source.path} is a quantization-aware export for the {flavour} flavour: its recipe and learned "
            f"scales are fixed, so {', '.join(given)} cannot apply; drop them (or fine-tune again with those)",
            params=tuple(given),
        )


def fp32_source_name(source: SourceModel) -> str:
    """The FP32 file ``source`` was built from, named by its manifest, or the usual export name."""
    manifest = matching_manifest(source.path)
    if manifest is not None:
        for candidate in sorted(source.path.parent.glob("*.onnx")):
            if candidate != source.path and sha256_of_file(candidate) == manifest.source_onnx_sha256:
                return str(candidate)
    return str(source.path.with_name(source.path.name.split(".")[0] + ".onnx"))


def graph_input_name(proto: onnx.ModelProto) -> str:
    initializers = {init.name for init in proto.graph.initializer}
    return next(i.name for i in proto.graph.input if i.name not in initializers)


def random_images(proto: onnx.ModelProto, metadata: ModelMetadata | None) -> np.ndarray:
    if metadata is not None:
        shape: tuple[int, ...] = metadata.input_size
    else:
        dims = proto.graph.input[0].type.tensor_type.shape.dim[1:]
        shape = tuple(int(d.dim_value) or 1 for d in dims)
    return np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
