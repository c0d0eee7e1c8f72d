"""Precision ONNX files: FP16 conversion, INT8 calibration (methods, caches) and Q/DQ recipes, the TensorRT lint.

Split as ONNX Runtime's quantization package is: :mod:`.recipe` (what is asked),
:mod:`.calibration` (reader, calibrators by name, ranges and caches), :mod:`.fp16`,
:mod:`.int8` (Q/DQ placement, the float layers a recipe keeps), :mod:`.lint` (TensorRT's Q/DQ rules),
:mod:`.equalize` (cross-layer equalization of the FP32 graph, before calibration). The public
names are re-exported here: ``from sedeploy.precision import Int8Recipe``.
"""

from sedeploy.precision.calibration import (
    CALIBRATION_FORMAT,
    CALIBRATION_FORMAT_VERSION,
    CALIBRATORS,
    ArrayCalibrationReader,
    CalibrationDataReader,
    CalibrationRanges,
    Calibrator,
    calibrate,
    calibrate_cached,
    calibration_cache_path,
    create_calibrator,
    entropy_threshold_bin,
    images_sha256,
    tensorrt_calibration_cache,
    write_calibration_cache,
)
from sedeploy.precision.equalize import (
    EQUALIZATION_KEY,
    Equalization,
    EqualizedGroup,
    check_function_preserved,
    equalizable_groups,
    equalization_record,
    equalize,
)
from sedeploy.precision.fp16 import DEFAULT_FP16_BLOCK_LIST, convert_fp16
from sedeploy.precision.int8 import quantize_int8, resolve_nodes
from sedeploy.precision.lint import lint_tensorrt_qdq
from sedeploy.precision.recipe import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_HISTOGRAM_BINS,
    DEFAULT_PERCENTILE,
    DEFAULT_QUANTIZED_BINS,
    FLAVOURS,
    HIGH_PRECISIONS,
    SE_QUANTIZED_OPS,
    TENSORRT_QUANTIZED_OPS,
    Int8Recipe,
    PrecisionError,
    fidelity_optimization_level,
)

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_FORMAT_VERSION",
    "CALIBRATION_METHODS",
    "CALIBRATORS",
    "DEFAULT_CALIBRATION_METHOD",
    "DEFAULT_FP16_BLOCK_LIST",
    "DEFAULT_HISTOGRAM_BINS",
    "DEFAULT_PERCENTILE",
    "DEFAULT_QUANTIZED_BINS",
    "EQUALIZATION_KEY",
    "FLAVOURS",
    "HIGH_PRECISIONS",
    "SE_QUANTIZED_OPS",
    "TENSORRT_QUANTIZED_OPS",
    "ArrayCalibrationReader",
    "CalibrationDataReader",
    "CalibrationRanges",
    "Calibrator",
    "Equalization",
    "EqualizedGroup",
    "Int8Recipe",
    "PrecisionError",
    "calibrate",
    "calibrate_cached",
    "calibration_cache_path",
    "check_function_preserved",
    "convert_fp16",
    "create_calibrator",
    "entropy_threshold_bin",
    "equalizable_groups",
    "equalization_record",
    "equalize",
    "fidelity_optimization_level",
    "images_sha256",
    "lint_tensorrt_qdq",
    "quantize_int8",
    "resolve_nodes",
    "tensorrt_calibration_cache",
    "write_calibration_cache",
]
