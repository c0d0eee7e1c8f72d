"""Artifact file names: the one place that derives where each stage writes, and which backend opens a file.

``model.onnx`` -> ``model.int8-cpu.onnx`` (precision ONNX) -> ``model.int8-cpu.ort.onnx`` (ONNX Runtime's
optimized graph) | ``model.int8-tensorrt.engine`` (TensorRT) ; ``model.int8.openvino.xml`` (OpenVINO, from the
FP32 ONNX). A build writes these names and ``bench --compare`` looks for them: both call this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from sedeploy.errors import BadInputError

ARTIFACT_BACKENDS = ("onnxruntime", "tensorrt", "openvino")
"""The backends an artifact is built for; ``auto`` (build) and ``torch`` (runtime) are added where they apply."""
ENGINE_SUFFIXES = (".engine", ".plan")
ONNX_SUFFIXES = (".onnx",)
OPENVINO_SUFFIXES = (".xml",)
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
OPTIMIZED_ONNX_SUFFIX = ".ort.onnx"
"""ONNX Runtime's saved optimized graph: specific to the backend (and, at level ``all``, to the CPU kind)."""
OPENVINO_IR_SUFFIX = ".openvino.xml"
ENGINE_SUFFIX = ENGINE_SUFFIXES[0]
BACKEND_ARTIFACT_SUFFIXES = {
    "onnxruntime": OPTIMIZED_ONNX_SUFFIX,
    "openvino": OPENVINO_IR_SUFFIX,
    "tensorrt": ENGINE_SUFFIX,
}
"""The suffix of each backend's runnable artifact (what ``optimize`` appends to ``<model>.best``)."""
OUTPUT_SUFFIXES = {"onnxruntime": ".onnx", "tensorrt": ENGINE_SUFFIX, "openvino": ".xml"}
"""What an explicit output name must end with for :func:`artifact_backend` to open it with that backend."""


def artifact_backend(path: str | os.PathLike[str]) -> str:
    """The backend that runs ``path`` by its kind: ``tensorrt``, ``onnxruntime``, ``openvino`` or ``torch``."""
    name = str(path)
    suffix = Path(name).suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix in ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in OPENVINO_SUFFIXES:
        return "openvino"
    if suffix in WEIGHTS_SUFFIXES or Path(name).is_file():
        return "torch"
    if suffix or os.sep in name:
        raise BadInputError(
            f"{name} does not exist and is not an architecture name; give an .onnx, .engine/.plan, .xml or weights file"
        )
    return "torch"  # an architecture name or package.module:factory


def precision_suffix(precision: str, flavour: str | None = None) -> str:
    """File-name part for an artifact's precision: ``fp16``, ``int8-tensorrt``, ``int8-cpu``."""
    return f"{precision}-{flavour}" if precision == "int8" and flavour else precision


def precision_onnx_path(model_path: Path, precision: str, flavour: str | None = None) -> Path:
    """``models/x/model.onnx`` -> ``models/x/model.int8-cpu.onnx`` (beside the source); FP32 is the source."""
    if precision == "fp32":
        return model_path
    return model_path.with_name(f"{model_path.stem}.{precision_suffix(precision, flavour)}.onnx")


def optimized_onnx_path(precision_path: Path) -> Path:
    """ONNX Runtime's optimized graph of a (precision) ONNX: ``model.fp16.onnx`` -> ``model.fp16.ort.onnx``."""
    return precision_path.with_name(precision_path.stem + OPTIMIZED_ONNX_SUFFIX)


def is_optimized_onnx(path: Path) -> bool:
    """True for ONNX Runtime's backend-specific optimized graph (``*.ort.onnx``)."""
    return path.name.lower().endswith(OPTIMIZED_ONNX_SUFFIX)


def portable_onnx_path(optimized_path: Path) -> Path:
    """The portable precision ONNX an ONNX Runtime optimized graph was made from: ``m.int8-cpu.ort.onnx`` -> ``m.int8-cpu.onnx``."""
    name = optimized_path.name
    if not name.lower().endswith(OPTIMIZED_ONNX_SUFFIX):
        return optimized_path
    return optimized_path.with_name(name[: -len(OPTIMIZED_ONNX_SUFFIX)] + ".onnx")


def with_backend_suffix(stem: Path, backend: str) -> Path:
    """``<stem>`` + the runnable artifact suffix of ``backend`` (``.ort.onnx``, ``.openvino.xml``, ``.engine``)."""
    return stem.with_name(stem.name + BACKEND_ARTIFACT_SUFFIXES[backend])


def engine_path(precision_path: Path) -> Path:
    """The TensorRT plan built from a (precision) ONNX: ``model.int8-tensorrt.onnx`` -> ``.engine``."""
    return precision_path.with_suffix(ENGINE_SUFFIX)


def openvino_path(model_path: Path, precision: str) -> Path:
    """The OpenVINO IR (``.xml``; ``.bin`` beside it) built from the FP32 ONNX at ``precision``."""
    suffix = "" if precision == "fp32" else f".{precision}"
    return model_path.with_name(f"{model_path.stem}{suffix}{OPENVINO_IR_SUFFIX}")


def artifact_path(model_path: Path, backend: str, precision: str, flavour: str | None = None) -> Path:
    """The file a build of ``model_path`` writes (and runs) with default output names."""
    if backend == "openvino":
        return openvino_path(model_path, precision)
    precision_path = precision_onnx_path(model_path, precision, flavour)
    if backend == "tensorrt":
        return engine_path(precision_path)
    return optimized_onnx_path(precision_path)


def calibration_cache_path(model_path: Path, method: str, symmetric: bool) -> Path:
    """Where the calibration ranges of ``model_path`` for a method and mode live: beside the model."""
    mode = "symmetric" if symmetric else "asymmetric"
    return model_path.with_name(f"{model_path.stem}.calibration.{method}.{mode}.json")


def tensorrt_calibration_cache_path(cache_path: Path) -> Path:
    """TensorRT's legacy text calibration cache beside a ``.json`` calibration cache."""
    return cache_path.with_suffix(".trt.cache")
