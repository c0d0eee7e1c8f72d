"""Small helpers the precision modules share: reading and writing ONNX, ONNX Runtime's quantization toolkit."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from sedeploy.artifacts.metadata import load_onnx
from sedeploy.errors import BadInputError
from sedeploy.files import atomic_output
from sedeploy.optional import import_optional

logger = logging.getLogger("sedeploy.precision")


def load(path: Path) -> onnx.ModelProto:
    """The ONNX file at ``path`` with its weights in memory, through the artifact contract's one reader.

    External data is checked there (inside the model's folder) and then read in, so a converted graph carries
    its own weights instead of pointing at the source's data file with the source's sizes.
    """
    model = load_onnx(path)
    try:
        onnx.load_external_data_for_model(model, str(Path(path).parent))
    except Exception as error:
        raise BadInputError(f"{path}: cannot read its external data ({error}); export it again") from None
    return model


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
