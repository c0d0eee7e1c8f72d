"""Small helpers the precision modules share: reading and writing ONNX, ONNX Runtime's quantization toolkit."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, Union

import onnx

from sedeploy.artifacts.metadata import load_onnx
from sedeploy.errors import BadInputError
from sedeploy.files import atomic_output, sha256_of_file
from sedeploy.optional import import_optional

logger = logging.getLogger("sedeploy.precision")


class ModelSource(Protocol):
    """A model already read (the build's :class:`~sedeploy.building.SourceModel`): its path, graph and hash."""

    @property
    def path(self) -> Path: ...

    @property
    def proto(self) -> onnx.ModelProto: ...

    @property
    def sha256(self) -> str: ...


ModelInput = Union[str, os.PathLike, ModelSource]  # noqa: UP007 (a runtime alias; X | Y needs 3.10 objects)
"""What the precision steps take: a path (read here), or the source a build read once (copied, never re-read)."""


def model_path(model: ModelInput) -> Path:
    """The file a model input names."""
    return Path(model) if isinstance(model, (str, os.PathLike)) else model.path


def model_sha256(model: ModelInput) -> str:
    """The sha256 of a model input's file: the one a build computed, else hashed now."""
    return sha256_of_file(model) if isinstance(model, (str, os.PathLike)) else model.sha256


def load(model: ModelInput) -> onnx.ModelProto:
    """The ONNX model with its weights in memory, through the artifact contract's one reader.

    A path is read (external data checked there, inside the model's folder, and then read in, so a converted
    graph carries its own weights instead of pointing at the source's data file with the source's sizes); a
    source already read is copied (the caller's graph is never changed) with its external data read in.
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        proto = load_onnx(path)
    else:
        path = model.path
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        if not any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in proto.graph.initializer):
            return proto
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as error:
        raise BadInputError(f"{path}: cannot read its external data ({error}); export it again") from None
    return proto


def save(model: onnx.ModelProto, output_path: Path) -> None:
    """Write ``model`` atomically: a reader never sees half a file."""
    with atomic_output(output_path) as temp_path:
        onnx.save_model(model, str(temp_path))


def copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """Carry the source's ``metadata_props`` (sedeploy's model metadata) into a converted graph."""
    existing = {prop.key for prop in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in existing:
            target.metadata_props.add(key=prop.key, value=prop.value)


def input_name(model: onnx.ModelProto) -> str:
    """The first graph input that is not an initializer."""
    initializer_names = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializer_names)


def ort_quantization() -> Any:
    return import_optional("onnxruntime.quantization", "cpu")


def ort_version() -> str:
    return str(import_optional("onnxruntime", "cpu").__version__)


@contextlib.contextmanager
def ort_chatter_to_log() -> Iterator[None]:
    """ONNX Runtime's quantization tools print progress to stdout; route it to the debug log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        logger.debug("onnxruntime: %s", line)


@contextlib.contextmanager
def quiet_root_warnings() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger (pre-processing, per-tensor fallbacks); keep it at debug."""
    root = logging.getLogger()
    handler_filter = _RootOnnxRuntimeFilter()
    root.addFilter(handler_filter)
    try:
        yield
    finally:
        root.removeFilter(handler_filter)


class _RootOnnxRuntimeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root":
            logger.debug("onnxruntime: %s", record.getMessage())
            return False
        return True
