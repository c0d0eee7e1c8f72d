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
from sedeploy.artifacts.precision import graph_precision
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import sha256_of_file

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
    return SourceModel(model_path, proto, metadata, sha256_of_file(model_path), precision)


def refuse_what_cannot_apply(source: SourceModel, options: BuildOptions) -> None:
    """Options that this source cannot honour are refused, never dropped."""
    if source.precision != "fp32" and options.precision != "fp32":
        start = fp32_source_name(source)
        raise ConfigError(
            f"{source.path} is already {source.precision}; build {options.precision} from the FP32 export "
            f"({start}), or build this file as it is without fp16/int8"
        )
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
