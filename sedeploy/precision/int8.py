"""INT8 graphs with explicit Q/DQ: the placement per flavour, quantized by ONNX Runtime's ``quantize_static``.

ONNX Runtime's toolkit writes the Q/DQ pairs; sedeploy decides where they go:
the ``tensorrt`` flavour quantizes the inputs of Conv/Gemm and both inputs of the
residual Add and leaves the SE gate in float; the ``cpu`` flavour takes ONNX
Runtime's default placement. The ranges come from :mod:`.calibration`, never
from a second calibration inside ``quantize_static``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sedeploy.graphs.se_blocks import find_se_blocks, graph_with_node_names
from sedeploy.precision._common import (
    copy_metadata,
    load,
    ort_chatter_to_log,
    ort_quantization,
    quiet_root_warnings,
    save,
)
from sedeploy.precision.calibration import CalibrationRanges
from sedeploy.precision.lint import lint_tensorrt_qdq
from sedeploy.precision.recipe import TENSORRT_QUANTIZED_OPS, Int8Recipe, PrecisionError

logger = logging.getLogger(__name__)


def _method_enum(method: str) -> Any:
    quantization = ort_quantization()
    return {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }[method]


def _tensors_data(ranges: CalibrationRanges, method: str) -> Any:
    quantization = ort_quantization()
    return quantization.TensorsData(
        _method_enum(method),
        {
            name: quantization.calibrate.TensorData(
                lowest=np.array(low, dtype=np.float32), highest=np.array(high, dtype=np.float32)
            )
            for name, (low, high) in ranges.ranges.items()
        },
    )


class _GivenRanges:
    """Stands in for ONNX Runtime's calibrator on releases whose ``quantize_static`` takes no cached ranges."""

    def __init__(self, tensors: Any) -> None:
        self.tensors = tensors

    def collect_data(self, reader: Any) -> None:
        del reader

    def compute_data(self) -> Any:
        return self.tensors


class _NoData:
    def get_next(self) -> None:
        return None


@contextlib.contextmanager
def _ranges_as_calibrator(tensors: Any) -> Iterator[None]:
    """Hand ``tensors`` to ``quantize_static`` through its calibrator factory (ONNX Runtime < 1.32)."""
    module = inspect.getmodule(ort_quantization().quantize_static)
    original = module.create_calibrator  # type: ignore[union-attr]
    module.create_calibrator = lambda *args, **kwargs: _GivenRanges(tensors)  # type: ignore[union-attr]
    try:
        yield
    finally:
        module.create_calibrator = original  # type: ignore[union-attr]


def quantize_int8(
    model_path: Path,
    output_path: Path,
    ranges: CalibrationRanges,
    recipe: Int8Recipe,
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a QDQ INT8 copy of ``model_path`` using calibrated ``ranges``; return the recipe as built.

    ``images`` is accepted for older callers and not used: the ranges are always the ones given.
    """
    del images
    quantization = ort_quantization()
    model = graph_with_node_names(load(model_path))
    se_blocks = find_se_blocks(model)
    excluded = [] if recipe.se_quantized else [name for block in se_blocks for name in block]
    extra_options: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": recipe.symmetric}
    if recipe.flavour == "tensorrt":
        extra_options.update(
            QuantizeBias=False, OpTypesToExcludeOutputQuantization=list(TENSORRT_QUANTIZED_OPS)
        )
    extra_options["CalibTensorRangeSymmetric"] = recipe.symmetric
    tensors = _tensors_data(ranges, recipe.method)
    activation_type = (
        quantization.QuantType.QInt8 if recipe.flavour == "tensorrt" else quantization.QuantType.QUInt8
    )
    with tempfile.TemporaryDirectory(prefix="sedeploy-quantize-") as work_dir:
        named_model = Path(work_dir) / "named.onnx"
        onnx.save_model(model, named_model)
        arguments: dict[str, Any] = dict(
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=activation_type,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            calibrate_method=_method_enum(recipe.method),
            op_types_to_quantize=recipe.op_types,
            nodes_to_exclude=excluded,
            extra_options=extra_options,
        )
        given_ranges: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if "calibration_cache_path" in inspect.signature(quantization.quantize_static).parameters:
            ort_cache = Path(work_dir) / "ranges.json"
            quantization.calibrate.save_tensors_data(tensors, ort_cache)
            arguments.update(calibration_data_reader=None, calibration_cache_path=str(ort_cache))
        else:
            arguments["calibration_data_reader"] = _NoData()
            given_ranges = _ranges_as_calibrator(tensors)
        quantized_path = Path(work_dir) / "quantized.onnx"
        try:
            with ort_chatter_to_log(), quiet_root_warnings(), given_ranges:
                quantization.quantize_static(str(named_model), str(quantized_path), **arguments)
        except Exception as error:
            raise PrecisionError(f"INT8 quantization of {model_path} failed: {error}") from error
        quantized = onnx.load(str(quantized_path))
    copy_metadata(model, quantized)
    if recipe.flavour == "tensorrt":
        problems = lint_tensorrt_qdq(quantized)
        if problems:
            raise PrecisionError(
                f"the INT8 graph breaks TensorRT's explicit-quantization rules ({problems[0]}; "
                f"{len(problems)} problem(s) in all); please report this"
            )
    save(quantized, output_path)
    float_ops = sorted({node.op_type for node in model.graph.node if node.name in set(excluded)})
    return {
        **recipe.to_dict(),
        "se_blocks": len(se_blocks),
        "left_in_float": f"SE excitation path ({', '.join(float_ops)})"
        if excluded
        else "nothing quantizable",
        "quantized_op_types": recipe.op_types or "every type ONNX Runtime quantizes",
    }
