"""What an INT8 graph is made of: the recipe (flavour, calibration method and its parameters, SE handling).

The recipe is the one object the calibrator, the Q/DQ placement and the manifest
all read, so what was asked for, what was measured and what was recorded cannot
drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sedeploy.errors import ConfigError, SedeployError

logger = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "cpu")
"""INT8 flavours: ``tensorrt`` (signed symmetric activations, Q/DQ where TensorRT fuses) and ``cpu``
(unsigned activations, signed weights: what ONNX Runtime's x86 INT8 kernels run fast)."""
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "minmax"
"""The default: on the shipped digits model minmax matched or beat entropy in every measurement
(benchmarks/results/peer_modelopt.md), and entropy's clipping cost the cpu flavour its parity gate (min cosine
0.978 vs 0.9998 on 100 calibration images). ``--calib-method sweep`` measures all of them."""
DEFAULT_PERCENTILE = 99.999
DEFAULT_HISTOGRAM_BINS = 2048
"""Bins of the fine |x| histogram the entropy and percentile calibrators measure (TensorRT's entropy uses 2048)."""
DEFAULT_QUANTIZED_BINS = 128
"""Quantized bins the entropy search folds a candidate range into: the positive half of INT8."""
HIGH_PRECISIONS = ("fp16", "fp32")
TENSORRT_QUANTIZED_OPS = ("Conv", "Gemm", "Add", "MaxPool")
SE_QUANTIZED_OPS = ("Mul", "ReduceMean", "GlobalAveragePool", "Sigmoid")


class PrecisionError(SedeployError):
    """A precision conversion failed, or its result does not run, does not match FP32 closely enough,
    or does not run in the precision it was asked for."""


@dataclass(frozen=True)
class Int8Recipe:
    """How an INT8 graph is calibrated and quantized; recorded in the build manifest."""

    flavour: str = "tensorrt"
    method: str = DEFAULT_CALIBRATION_METHOD
    percentile: float = DEFAULT_PERCENTILE
    quantize_se: bool | None = None
    """Quantize the SE excitation path too. None: the flavour's default, measured per flavour: ``cpu``
    quantizes it (with the squeeze as GlobalAveragePool, ONNX Runtime fuses it to INT8 ops: 1.35x at
    batch 1, 2.1x at batch 8 on SE-ResNet-50, benchmarks/results/se_squeeze_rewrite.md); ``tensorrt``
    keeps it in float (it costs almost nothing on a GPU and the sigmoid gate is the most rounding-sensitive
    part)."""
    batch_size: int = 16
    """Images per calibration batch: memory only, the ranges do not depend on it."""
    histogram_bins: int = DEFAULT_HISTOGRAM_BINS
    quantized_bins: int = DEFAULT_QUANTIZED_BINS
    high_precision: str | None = None
    """Type of the layers left out of INT8: ``fp16`` (the ``tensorrt`` flavour's default, as ModelOpt's
    ``--high_precision_dtype``: TensorRT runs a strongly typed graph in the types it is given) or ``fp32``
    (the ``cpu`` flavour's only choice: ONNX Runtime's x86 kernels have no FP16 convolution)."""
    float_nodes: tuple[str, ...] = ()
    """Nodes kept out of INT8 (ONNX node names or PyTorch module names, as the per-layer report names them):
    the fewest float layers repair. They take the flavour's float type (FP16 in the tensorrt flavour, so the
    file stays strongly typed; FP32 in the cpu flavour)."""
    equalize: bool = False
    """Cross-layer equalization of the FP32 graph before calibration (:mod:`sedeploy.precision.equalize`)."""
    every_tensor_int8: bool = False
    """Every tensor INT8: the SE path, both residual inputs and the classifier head too (what Jetson's DLA
    needs: a float layer splits its regions). Never combined with ``float_nodes``: a repair of such a file
    may equalize, never leave a layer in float."""

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"unknown INT8 target {self.flavour!r}; valid values: {', '.join(FLAVOURS)}")
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.method!r}; valid values: {', '.join(CALIBRATION_METHODS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.batch_size < 1:
            raise ConfigError(f"calibration batch_size must be >= 1, got {self.batch_size}")
        if self.high_precision not in (None, *HIGH_PRECISIONS):
            raise ConfigError(
                f"unknown high_precision {self.high_precision!r}; valid values: {', '.join(HIGH_PRECISIONS)}"
            )
        if self.flavour == "cpu" and self.high_precision == "fp16":
            raise ConfigError(
                "high_precision='fp16' goes with the tensorrt flavour; the cpu flavour keeps its float layers in "
                "fp32 (ONNX Runtime's x86 kernels would cast FP16 back to FP32)"
            )
        if isinstance(self.float_nodes, str) or not all(
            isinstance(name, str) and name for name in self.float_nodes
        ):
            raise ConfigError(f"float_nodes must be a list of node or module names, got {self.float_nodes!r}")
        object.__setattr__(self, "float_nodes", tuple(dict.fromkeys(self.float_nodes)))
        if self.every_tensor_int8 and self.float_nodes:
            raise ConfigError(
                "every_tensor_int8 keeps no layer in float; drop float_nodes or every_tensor_int8"
            )
        if self.every_tensor_int8 and self.quantize_se is False:
            raise ConfigError("every_tensor_int8 quantizes the SE path too; drop quantize_se=False")
        if self.quantized_bins < 2 or self.histogram_bins < self.quantized_bins:
            raise ConfigError(
                f"histogram_bins ({self.histogram_bins}) must be at least quantized_bins "
                f"({self.quantized_bins}), and quantized_bins at least 2"
            )

    @property
    def se_quantized(self) -> bool:
        """Whether the SE path is quantized, the flavour's default resolved."""
        if self.every_tensor_int8:
            return True
        return self.quantize_se if self.quantize_se is not None else self.flavour == "cpu"

    @property
    def float_type(self) -> str:
        """The type of the layers left out of INT8, the flavour's default resolved."""
        if self.high_precision is not None:
            return self.high_precision
        return "fp16" if self.flavour == "tensorrt" else "fp32"

    @property
    def symmetric(self) -> bool:
        """TensorRT's explicit quantization is symmetric (zero-point 0) for activations too."""
        return self.flavour == "tensorrt"

    @property
    def op_types(self) -> list[str] | None:
        """Op types to quantize; None lets ONNX Runtime take every type it can quantize.

        Calibration always covers every tensor, so one cache serves both flavours'
        placements and TensorRT's legacy cache has a range for every tensor.
        """
        if self.flavour == "tensorrt":
            return list(TENSORRT_QUANTIZED_OPS + (SE_QUANTIZED_OPS if self.se_quantized else ()))
        return None

    def calibration_parameters(self) -> dict[str, Any]:
        """The method and every parameter that shapes its ranges (recorded in the manifest and the cache key)."""
        parameters: dict[str, Any] = {"method": self.method, "symmetric": self.symmetric}
        if self.method == "entropy":
            parameters.update(
                histogram_bins=self.histogram_bins,
                quantized_bins=self.quantized_bins,
                statistic="absolute value",
                divergence="KL",
            )
        elif self.method == "percentile":
            parameters.update(
                percentile=self.percentile, histogram_bins=self.histogram_bins, statistic="absolute value"
            )
        return parameters

    def cache_key(self) -> dict[str, Any]:
        """What, besides model and data, decides the calibration ranges."""
        return self.calibration_parameters()

    def to_dict(self) -> dict[str, Any]:
        return {
            "flavour": self.flavour,
            "method": self.method,
            "percentile": self.percentile if self.method == "percentile" else None,
            "calibration_parameters": self.calibration_parameters(),
            "quantize_se": self.se_quantized,
            "high_precision": self.float_type,
            "activations": "int8 symmetric" if self.flavour == "tensorrt" else "uint8 asymmetric",
            "weights": "int8 symmetric per-channel (output-channel axis)",
            "bias": "float" if self.flavour == "tensorrt" else "int32 (ONNX Runtime default)",
            "float_nodes": list(self.float_nodes),
            "equalize": self.equalize,
            "every_tensor_int8": self.every_tensor_int8,
        }


def fidelity_optimization_level(recipe: Mapping[str, Any]) -> str:
    """The ONNX Runtime optimization level at which to check a precision ONNX against FP32.

    ``all`` for the ``cpu`` flavour and FP32, FP16 files built for ONNX Runtime (what ONNX Runtime then runs);
    ``disable`` for the ``tensorrt`` flavour: its numerics are the graph's own, and ONNX Runtime's rewrites of
    an FP16+INT8 graph (fusions, casts it removes between FP16 nodes on a CPU without FP16 kernels) are not
    TensorRT's. ModelOpt's FP16+INT8 file of the digits model read cosine 0.9688 with optimizations on and
    0.9958 with them off; sedeploy's reads the same at every level, and this keeps it honest if that changes.
    """
    return "disable" if recipe.get("flavour") == "tensorrt" else "all"
