"""What a build is asked for and what it wrote: :class:`BuildOptions`, :class:`BuildResult`, the backend choice."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedeploy.artifacts.manifest import (
    PRECISIONS,
    BuildManifest,
    manifest_path,
)
from sedeploy.artifacts.naming import ARTIFACT_BACKENDS
from sedeploy.backends.audit import (
    DEFAULT_MIN_PRECISION_SHARE,
    PrecisionAudit,
)
from sedeploy.backends.tensorrt.compat import TensorRTOptions
from sedeploy.compare import Comparison
from sedeploy.errors import ConfigError
from sedeploy.precision import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_FP16_BLOCK_LIST,
    DEFAULT_PERCENTILE,
    HIGH_PRECISIONS,
)

logger = logging.getLogger(__name__)

BUILD_BACKENDS = ("auto", *ARTIFACT_BACKENDS)
"""What ``backend`` may name: a concrete backend, or ``auto`` (chosen by measurement on a CPU)."""
DEFAULT_CALIBRATION_DIR = Path("calibration")
DEFAULT_CALIBRATION_SIZE = 512
FP16_MIN_COSINE = 0.999
"""Below this, an FP16 graph is refused: FP16 rounding alone stays far above it on a sane model."""
DEFAULT_PROBE_BATCHES = (1, 8)
DEFAULT_PROBE_SECONDS = 2.0
DEFAULT_MIN_INT8_MAC_SHARE = 0.5
"""An INT8 repair never leaves so many layers float that less than this share of the MACs stays INT8."""


ONNX_RECIPE_OPTIONS = (
    "target",
    "calib_method",
    "percentile",
    "quantize_se",
    "high_precision",
    "every_tensor_int8",
)
"""Build options that shape the ONNX Q/DQ recipe: OpenVINO's NNCF build has its own recipe and refuses them."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``build-engine`` takes besides the model path; recorded in the manifest."""

    precision: str = "fp32"
    backend: str = "auto"
    target: str | None = None
    calib_dir: Path | None = None
    calib_size: int = DEFAULT_CALIBRATION_SIZE
    calib_method: str = DEFAULT_CALIBRATION_METHOD
    percentile: float = DEFAULT_PERCENTILE
    quantize_se: bool | None = None
    recalibrate: bool = False
    fp16_block_list: Sequence[str] = DEFAULT_FP16_BLOCK_LIST
    seed: int = 0
    preprocessing_overrides: dict[str, Any] = field(default_factory=dict)
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)
    """TensorRT builder options, passed to :func:`sedeploy.backends.tensorrt.build_engine`; refused with
    another backend (a build that cannot honour them must not drop them)."""
    implicit_int8: bool = False
    """TensorRT 10.x only: calibrate with TensorRT's legacy INT8 calibrator on the FP32 graph instead of Q/DQ."""
    probe_batches: tuple[int, ...] = DEFAULT_PROBE_BATCHES
    """``auto`` on a CPU with OpenVINO: the batch sizes the ONNX Runtime / OpenVINO probe times."""
    probe_seconds: float = DEFAULT_PROBE_SECONDS
    """``auto`` probe: timed seconds per backend and batch size (over two interleaved rounds)."""
    float_type: str | None = None
    """OpenVINO: pin the float layers' INFERENCE_PRECISION_HINT (f32, bf16, f16); default: measured at build."""
    hint: str | None = None
    """OpenVINO: pin the PERFORMANCE_HINT (latency, throughput); default: measured at probe_batches."""
    gate: bool = True
    """Refuse to publish an FP16/INT8 file whose parity with FP32 misses verify's thresholds; False publishes
    anyway (recorded in the manifest)."""
    high_precision: str | None = None
    """INT8 tensorrt flavour: type of the layers left out of INT8, ``fp16`` (default) or ``fp32``."""
    min_precision_share: float = DEFAULT_MIN_PRECISION_SHARE
    """The build fails when the asked precision covers less than this share of the MACs (precision audit)."""
    sweep_data: Path | None = None
    """``calib_method="sweep"``: the held-out image folder each candidate is measured on."""
    repair: bool = True
    """INT8 whose parity misses the gate is repaired (cross-layer equalization, then the fewest float layers)
    and the first file that passes is published; False refuses it, naming the worst layers. Needs ``gate``."""
    min_int8_mac_share: float = DEFAULT_MIN_INT8_MAC_SHARE
    """A repair keeps at least this share of the MACs in INT8 (it fails rather than leave more float)."""
    every_tensor_int8: bool = False
    """INT8 on every tensor, SE path and head included (what a Jetson DLA needs to run the network in one
    region); its repair only equalizes, it never keeps a layer float."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; valid values: {', '.join(PRECISIONS)}")
        if self.precision == "bf16" and self.backend != "openvino":
            raise ConfigError(
                "precision 'bf16' is built for OpenVINO only (ONNX Runtime has no faster BF16 path on a CPU); "
                "pass backend='openvino'"
            )
        if self.backend not in BUILD_BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; valid values: {', '.join(BUILD_BACKENDS)}")
        if self.calib_size < 1:
            raise ConfigError(f"calib_size must be at least 1, got {self.calib_size}")
        if self.calib_method not in (*CALIBRATION_METHODS, "sweep"):
            raise ConfigError(
                f"unknown calibration method {self.calib_method!r}; valid values: "
                f"{', '.join((*CALIBRATION_METHODS, 'sweep'))}"
            )
        if self.calib_method == "sweep" and self.sweep_data is None:
            raise ConfigError(
                "calib_method sweep measures each candidate on held-out images; give sweep_data",
                params=("sweep_data",),
            )
        if self.high_precision not in (None, *HIGH_PRECISIONS):
            raise ConfigError(
                f"unknown high_precision {self.high_precision!r}; valid values: {', '.join(HIGH_PRECISIONS)}"
            )
        if not 0.0 <= self.min_precision_share <= 1.0:
            raise ConfigError(f"min_precision_share must be in [0, 1], got {self.min_precision_share}")
        if not 0.0 <= self.min_int8_mac_share <= 1.0:
            raise ConfigError(f"min_int8_mac_share must be in [0, 1], got {self.min_int8_mac_share}")
        if not self.probe_batches or min(self.probe_batches) < 1 or self.probe_seconds <= 0:
            raise ConfigError(
                f"the auto probe needs positive batch sizes and seconds, got batches {list(self.probe_batches)} "
                f"and {self.probe_seconds} s"
            )
        if (self.float_type is not None or self.hint is not None) and self.backend not in (
            "openvino",
            "auto",
        ):
            raise ConfigError(
                "float_type and hint pin OpenVINO's runtime; they go with backend openvino",
                params=("hint", "backend"),
            )
        if self.every_tensor_int8 and (self.precision != "int8" or self.quantize_se is False):
            raise ConfigError(
                "every_tensor_int8 quantizes every tensor, SE path included: it goes with precision int8 and "
                "without quantize_se=False",
                params=("precision", "quantize_se"),
            )
        if self.implicit_int8 and (self.precision != "int8" or self.backend != "tensorrt"):
            raise ConfigError("implicit_int8 needs an int8 build with backend tensorrt", params=("backend",))
        if self.backend == "openvino" and self.onnx_recipe_options_given():
            given = ", ".join(self.onnx_recipe_options_given())
            raise ConfigError(
                f"{given} shape the ONNX Q/DQ recipe; OpenVINO's INT8 comes from NNCF's own recipe, so drop them "
                "with backend openvino",
                params=("percentile", "target", "backend"),
            )

    def onnx_recipe_options_given(self) -> tuple[str, ...]:
        """The options in :data:`ONNX_RECIPE_OPTIONS` set away from their defaults, in that order."""
        defaults = BuildOptions.__dataclass_fields__
        return tuple(name for name in ONNX_RECIPE_OPTIONS if getattr(self, name) != defaults[name].default)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "backend": self.backend,
            "target": self.target,
            "calib_dir": str(self.calib_dir) if self.calib_dir else None,
            "calib_size": self.calib_size,
            "calib_method": self.calib_method,
            "percentile": self.percentile,
            "quantize_se": self.quantize_se,
            "every_tensor_int8": self.every_tensor_int8,
            "recalibrate": self.recalibrate,
            "fp16_block_list": list(self.fp16_block_list),
            "seed": self.seed,
            "implicit_int8": self.implicit_int8,
            "tensorrt": self.tensorrt.to_dict(),
            "gate": self.gate,
            "float_type": self.float_type,
            "hint": self.hint,
            "high_precision": self.high_precision,
            "min_precision_share": self.min_precision_share,
            "sweep_data": str(self.sweep_data) if self.sweep_data else None,
            "repair": self.repair,
            "min_int8_mac_share": self.min_int8_mac_share,
        }


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote: the artifacts (each with a manifest beside it) and the checks it ran."""

    backend: str
    backend_reason: str
    precision: str
    artifacts: tuple[Path, ...]
    manifests: tuple[BuildManifest, ...]
    fidelity: Comparison | None
    calibration: dict[str, Any] | None
    seconds: float
    probe: dict[str, Any] | None = None
    """``auto`` on a CPU: the measured ONNX Runtime / OpenVINO probe that picked ``backend``."""
    notes: tuple[str, ...] = ()
    """Warnings the user should read (a small calibration set, a parity gate that was switched off)."""
    precision_audit: PrecisionAudit | None = None
    """What each layer of the built artifact runs in (``backends.audit``)."""
    repaired: str | None = None
    """What the INT8 repair did, in one line (``cross-layer equalization on 12 pairs; layer3.0.conv2 kept
    fp16; 97% of MACs int8``); None when no repair ran."""

    @property
    def artifact(self) -> Path:
        """The main artifact: the precision ONNX (ONNX Runtime) or the engine (TensorRT)."""
        return self.artifacts[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "precision": self.precision,
            "artifacts": [str(path) for path in self.artifacts],
            "manifests": [str(manifest_path(path)) for path in self.artifacts],
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
            "calibration": self.calibration,
            "seconds": round(self.seconds, 3),
            "probe": self.probe,
            "notes": list(self.notes),
            "precision_audit": self.precision_audit.to_dict() if self.precision_audit else None,
            "repaired": self.repaired,
        }

    def to_text(self) -> str:
        lines = [f"backend: {self.backend} ({self.backend_reason})"]
        for path in self.artifacts:
            lines.append(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) + {manifest_path(path).name}")
        if self.calibration:
            cal = self.calibration
            reuse = "reused cache" if cal["reused"] else "calibrated"
            lines.append(
                f"calibration: {cal['method']} on {cal['images']} images ({reuse}), "
                f"{len(cal['skipped'])} file(s) skipped"
            )
        if self.fidelity:
            runtime = "OpenVINO" if self.backend == "openvino" else "ONNX Runtime"
            check = next(
                (m.recipe["parity_check"] for m in self.manifests if "parity_check" in (m.recipe or {})), None
            )
            where = f" ({check['text']})" if check else ""
            lines.append(
                f"{self.precision} vs fp32 (ONNX Runtime) on {runtime}: {self.fidelity.to_text()}{where}"
            )
        if self.repaired:
            lines.append(f"repaired: {self.repaired}")
        if self.precision_audit:
            lines.append(f"runs as: {self.precision_audit.shares_text()}")
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"done in {self.seconds:.1f} s")
        return "\n".join(lines)


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to use and why: ``auto`` takes TensorRT when TensorRT and an NVIDIA GPU are present."""
    from sedeploy.backends import tensorrt as trt_backend

    if requested == "tensorrt":
        return requested, trt_backend.require_available()  # fails now, before any precision work
    if requested == "openvino":
        from sedeploy.backends import openvino as ov_backend

        return requested, ov_backend.require_available()  # fails now with the extra to install
    if requested != "auto":
        return requested, "asked for"

    available, reason = trt_backend.availability()
    if available:
        return "tensorrt", reason
    return "onnxruntime", f"TensorRT not used: {reason}"
