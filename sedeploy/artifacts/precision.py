"""The one precision rule: what precision an artifact is, from its manifest where one describes it, else its graph.

verify, bench, the Triton writer, serving and the TensorRT builder all ask here, so a QOperator INT8 file
(``QLinearConv``) is ``int8`` to every one of them, as a Q/DQ file is. OpenVINO's float types (what an IR's
float parts compute in) map onto these precision names here too (:data:`FLOAT_TYPE_PRECISION`). Importing
this module imports no onnx (the CLI's option choices read the float types from here at startup).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sedeploy.artifacts.manifest import matching_manifest
from sedeploy.artifacts.naming import ONNX_SUFFIXES

if TYPE_CHECKING:
    import onnx

INT8_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearGlobalAveragePool",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
    }
)
"""Ops that make a graph INT8: explicit Q/DQ (TensorRT, ORT QDQ) and ONNX Runtime's QOperator format."""


FLOAT_TYPE_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` values (float types) -> sedeploy's precision names, most accurate first."""
FLOAT_TYPES = tuple(FLOAT_TYPE_PRECISION)
"""The float types sedeploy chooses among (``f32``, ``bf16``, ``f16``), most accurate first."""


def float_type_precision(float_type: str) -> str:
    """The precision name of an OpenVINO float type: ``f16`` -> ``fp16``; a ``KeyError`` for another value."""
    return FLOAT_TYPE_PRECISION[float_type]


def precision_float_type(precision: str) -> str:
    """The float type an IR of ``precision`` is built to compute its float parts in (INT8's float layers: ``f32``)."""
    if precision == "int8":
        return "f32"
    return {name: kind for kind, name in FLOAT_TYPE_PRECISION.items()}[precision]


def graph_precision(model: onnx.ModelProto) -> str:
    """``int8`` with any :data:`INT8_OPS` node, ``fp16`` with float16 weights, else ``fp32``."""
    import onnx  # already imported by whoever parsed ``model``

    if any(node.op_type in INT8_OPS for node in model.graph.node):
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def detect_precision(artifact: str | os.PathLike[str]) -> str:
    """``fp32``/``fp16``/``int8`` of a file: its build manifest when that describes the file, else
    the ONNX graph (:func:`graph_precision`); ``fp32`` for another kind of file without a manifest."""
    path = Path(artifact)
    manifest = matching_manifest(path)
    if manifest is not None:
        return manifest.precision
    if path.suffix.lower() not in ONNX_SUFFIXES:
        return "fp32"
    from sedeploy.artifacts.metadata import load_onnx  # onnx only where a graph is read

    return graph_precision(load_onnx(path))
