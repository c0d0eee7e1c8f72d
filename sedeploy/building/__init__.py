"""Building: what every command that makes an artifact shares (``build-engine``, ``bench --compare``, ``optimize``).

``read_source`` reads the source once; ``build_for_backend`` writes the precision ONNX, gates it against FP32
and publishes one concrete backend's artifact with its manifest. Choosing a backend by measurement is the
measuring wing's job (:mod:`sedeploy.measure.auto`); the ``build-engine`` command (:mod:`sedeploy.build`) ties
them together.
"""

from sedeploy.building.engine import build_artifact, build_for_backend, refuse_before_building
from sedeploy.building.gate import (
    GATE_MAX_IMAGES,
    HOLD_OUT_FROM,
    GateImages,
    calibration_notes,
    check_on_onnxruntime,
    check_on_openvino,
    gate_images,
    parity_gate,
)
from sedeploy.building.options import (
    BUILD_BACKENDS,
    DEFAULT_CALIBRATION_DIR,
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_PROBE_BATCHES,
    DEFAULT_PROBE_SECONDS,
    FP16_MIN_COSINE,
    ONNX_RECIPE_OPTIONS,
    BuildOptions,
    BuildResult,
    choose_backend,
)
from sedeploy.building.precision_file import calibration_set_for, make_precision_file
from sedeploy.building.publish import check_output_suffix
from sedeploy.building.source import SourceModel, fp32_source_name, read_source, refuse_what_cannot_apply

__all__ = [
    "BUILD_BACKENDS",
    "DEFAULT_CALIBRATION_DIR",
    "DEFAULT_CALIBRATION_SIZE",
    "DEFAULT_PROBE_BATCHES",
    "DEFAULT_PROBE_SECONDS",
    "FP16_MIN_COSINE",
    "GATE_MAX_IMAGES",
    "HOLD_OUT_FROM",
    "ONNX_RECIPE_OPTIONS",
    "BuildOptions",
    "BuildResult",
    "GateImages",
    "SourceModel",
    "build_artifact",
    "build_for_backend",
    "calibration_notes",
    "calibration_set_for",
    "check_on_onnxruntime",
    "check_on_openvino",
    "check_output_suffix",
    "choose_backend",
    "fp32_source_name",
    "gate_images",
    "make_precision_file",
    "parity_gate",
    "read_source",
    "refuse_before_building",
    "refuse_what_cannot_apply",
]
