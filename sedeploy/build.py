"""``sedeploy build-engine``: from an exported ONNX to a precision artifact for a backend, with its manifest.

One function reads the exported model (and its metadata), writes the precision
ONNX (FP16-typed, or INT8 Q/DQ calibrated on an image set), checks it on ONNX
Runtime against the FP32 model, and hands it to the backend: ONNX Runtime saves
its optimized graph; TensorRT builds an engine. Every artifact gets the shared
build manifest beside it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sedeploy import __version__
from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.compare import Comparison, compare_logits
from sedeploy.data import CalibrationSet, load_image_set, preprocessing_for
from sedeploy.errors import ConfigError
from sedeploy.files import check_writable, sha256_of_file, temp_path_beside
from sedeploy.manifest import BuildManifest, describe_host, manifest_path, write_manifest
from sedeploy.metadata import ModelMetadata, load_onnx, metadata_or_none
from sedeploy.quantize import (
    DEFAULT_FP16_BLOCK_LIST,
    DEFAULT_PERCENTILE,
    Int8Recipe,
    PrecisionError,
    calibrate_cached,
    convert_fp16,
    default_output,
    quantize_int8,
)

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "openvino")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_CALIBRATION_DIR = Path("calibration")
DEFAULT_CALIBRATION_SIZE = 512
FP16_MIN_COSINE = 0.999
"""Below this, an FP16 graph is refused: FP16 rounding alone stays far above it on a sane model."""
_CHECK_IMAGES = 64


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``build-engine`` takes besides the model path; recorded in the manifest."""

    precision: str = "fp32"
    backend: str = "auto"
    target: str | None = None
    calib_dir: Path | None = None
    calib_size: int = DEFAULT_CALIBRATION_SIZE
    calib_method: str = "entropy"
    percentile: float = DEFAULT_PERCENTILE
    quantize_se: bool | None = None
    recalibrate: bool = False
    fp16_block_list: Sequence[str] = DEFAULT_FP16_BLOCK_LIST
    seed: int = 0
    preprocessing_overrides: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    """TensorRT builder options (``profile``, ``workspace``, ``opt_level``, ``timing_cache``,
    ``hardware_compat``, ``version_compat``), passed to :func:`sedeploy.backends.tensorrt.build_engine`."""
    implicit_int8: bool = False
    """TensorRT 10.x only: calibrate with TensorRT's legacy INT8 calibrator on the FP32 graph instead of Q/DQ."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; valid values: {', '.join(PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; valid values: {', '.join(BACKENDS)}")
        if self.calib_size < 1:
            raise ConfigError(f"--calib-size must be at least 1, got {self.calib_size}")
        if self.implicit_int8 and (self.precision != "int8" or self.backend != "tensorrt"):
            raise ConfigError("--implicit-int8 goes with --int8 --backend tensorrt")
        onnx_only = {
            "--calib-method": self.calib_method != "entropy",
            "--percentile": self.percentile != DEFAULT_PERCENTILE,
            "--quantize-se/--float-se": self.quantize_se is not None,
            "--target": self.target is not None,
        }
        if self.backend == "openvino" and any(onnx_only.values()):
            given = ", ".join(flag for flag, set_ in onnx_only.items() if set_)
            raise ConfigError(
                f"{given} shape the ONNX Q/DQ recipe; OpenVINO's INT8 comes from NNCF's own recipe, so drop them "
                "with --backend openvino"
            )

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
            "recalibrate": self.recalibrate,
            "fp16_block_list": list(self.fp16_block_list),
            "seed": self.seed,
            "implicit_int8": self.implicit_int8,
            **{f"tensorrt_{key}": str(value) for key, value in self.tensorrt.items()},
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
            lines.append(f"{self.precision} vs fp32 (ONNX Runtime) on {runtime}: {self.fidelity.to_text()}")
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


def _read_source(model_path: Path) -> tuple[onnx.ModelProto, ModelMetadata | None]:
    proto = load_onnx(model_path)
    return proto, metadata_or_none(proto)


def _input_name(proto: onnx.ModelProto) -> str:
    initializers = {init.name for init in proto.graph.initializer}
    return next(i.name for i in proto.graph.input if i.name not in initializers)


def _calibration_set(model_path: Path, options: BuildOptions, progress: bool) -> CalibrationSet:
    preprocessing, channels = preprocessing_for(model_path, **options.preprocessing_overrides)
    folder = options.calib_dir or DEFAULT_CALIBRATION_DIR
    return load_image_set(
        folder,
        preprocessing,
        channels,
        limit=options.calib_size,
        seed=options.seed,
        cache_dir=model_path.parent / ".sedeploy-cache",
        progress=progress,
    )


def _check_on_onnxruntime(
    reference_path: Path, candidate_path: Path, images: np.ndarray, input_name: str
) -> Comparison:
    reference = ort_backend.create_session(reference_path, ["CPUExecutionProvider"])
    candidate = ort_backend.create_session(candidate_path, ["CPUExecutionProvider"])
    batch = np.ascontiguousarray(images[:_CHECK_IMAGES], dtype=np.float32)
    return compare_logits(
        reference.run(None, {input_name: batch})[0], candidate.run(None, {input_name: batch})[0]
    )


def build_engine(
    model_path: str | Path,
    options: BuildOptions | None = None,
    output: str | Path | None = None,
    progress: bool = False,
) -> BuildResult:
    """Build ``options.precision`` for ``options.backend`` from the exported FP32 ONNX at ``model_path``.

    Writes the precision ONNX (``model.fp16.onnx``, ``model.int8-cpu.onnx``, ...)
    beside the source unless ``output`` names it, then the backend's artifact, and
    a manifest beside each. FP32 on ONNX Runtime writes only the optimized graph.
    """
    started = time.perf_counter()
    options = options or BuildOptions()
    model_path = Path(model_path)
    proto, metadata = _read_source(model_path)
    if output is not None:
        check_writable(output)
    backend, backend_reason = choose_backend(options.backend)
    logger.info("backend %s (%s)", backend, backend_reason)
    input_name = metadata.input_name if metadata else _input_name(proto)
    target = options.target or ("tensorrt" if backend == "tensorrt" or ort_backend.has_cuda() else "cpu")

    calibration_set: CalibrationSet | None = None
    if options.precision == "int8" or options.calib_dir is not None:
        calibration_set = _calibration_set(model_path, options, progress)
    precision_path = model_path
    recipe: dict[str, Any] = {}
    calibration: dict[str, Any] | None = None
    flavour = target if options.precision == "int8" else None
    if backend == "openvino":
        return _build_openvino(
            model_path, proto, metadata, options, output, calibration_set, started, backend_reason
        )
    staged_path = None
    if options.precision != "fp32" and not options.implicit_int8:  # implicit INT8: TensorRT calibrates FP32
        precision_path = (
            Path(output)
            if output and backend == "onnxruntime"
            else default_output(model_path, options.precision, flavour)
        )
        # Written and checked under a temporary name, renamed into place only once it passed.
        staged_path = temp_path_beside(precision_path)
    try:
        recipe, calibration, fidelity = _make_precision_file(
            model_path, staged_path, proto, metadata, options, target, input_name, calibration_set, progress
        )
        if staged_path is not None:
            os.replace(staged_path, precision_path)
    finally:
        if staged_path is not None:
            staged_path.unlink(missing_ok=True)

    common = dict(
        source_onnx_sha256=sha256_of_file(model_path),
        source_metadata=metadata.to_dict() if metadata else {},
        precision=options.precision,
        recipe=recipe,
        calibration=calibration,
        build_options={**options.to_dict(), "target": flavour or options.target},
        sedeploy_version=__version__,
    )
    artifacts: list[Path] = []
    manifests: list[BuildManifest] = []
    if backend == "onnxruntime":
        providers = ort_backend.default_providers()
        device = {"description": describe_host(), "providers": providers}
        if precision_path != model_path:
            manifests.append(_manifest(precision_path, "onnxruntime", device, started, **common))
            artifacts.append(precision_path)
        optimized_path = (
            Path(output)
            if output and precision_path == model_path  # FP32: the optimized graph is what -o names
            else precision_path.with_name(precision_path.stem + ".ort.onnx")
        )
        ort_backend.write_optimized_model(precision_path, optimized_path, providers)
        manifests.append(
            _manifest(
                optimized_path, "onnxruntime", {**device, "optimization_level": "all"}, started, **common
            )
        )
        artifacts.append(optimized_path)
    else:
        from sedeploy.backends import tensorrt as trt_backend

        engine_path = Path(output) if output else precision_path.with_suffix(".engine")
        legacy: dict[str, Any] = {}
        if options.implicit_int8:
            assert calibration_set is not None
            batches = calibration_set.images
            legacy = {
                "implicit_int8": [batches[i : i + 8] for i in range(0, len(batches), 8)],
                "calibration_cache": engine_path.with_suffix(".calibration.trt.cache"),
            }
            common = {key: value for key, value in common.items() if key not in ("precision", "recipe")}
        engine_manifest = trt_backend.build_engine_from_onnx(
            precision_path,
            engine_path,
            common=common,
            started=started,
            progress=progress,
            **options.tensorrt,
            **legacy,
        )
        artifacts.append(engine_path)
        manifests.append(engine_manifest)
    for path, manifest in zip(artifacts, manifests, strict=True):
        if backend == "onnxruntime":
            write_manifest(manifest, path)
    return BuildResult(
        backend=backend,
        backend_reason=backend_reason,
        precision=options.precision,
        artifacts=tuple(artifacts),
        manifests=tuple(manifests),
        fidelity=fidelity,
        calibration=calibration,
        seconds=time.perf_counter() - started,
    )


def _build_openvino(
    model_path: Path,
    proto: onnx.ModelProto,
    metadata: ModelMetadata | None,
    options: BuildOptions,
    output: str | Path | None,
    calibration_set: CalibrationSet | None,
    started: float,
    reason: str,
) -> BuildResult:
    """The OpenVINO IR of the FP32 ONNX: NNCF quantizes INT8 from the FP32 graph on the calibration set."""
    from sedeploy.backends import openvino as ov_backend

    suffix = "" if options.precision == "fp32" else f".{options.precision}"
    xml = Path(output) if output else model_path.with_name(f"{model_path.stem}{suffix}.openvino.xml")
    images = calibration_set.images if calibration_set is not None else None
    input_name = metadata.input_name if metadata else _input_name(proto)
    stem = [node.name for node in proto.graph.node if node.op_type == "Conv" and node.input[0] == input_name]
    recipe = ov_backend.build_ir(model_path, xml, options.precision, images, stem[:1])
    calibration = None
    if options.precision == "int8" and calibration_set is not None:
        report = calibration_set.report
        calibration = {
            "method": "nncf-minmax",
            "percentile": None,
            "images": report.used,
            "found": report.found,
            "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
            "dataset_sha256": report.dataset_sha256,
            "folder": report.folder,
            "reused": False,
            "tensors": None,
        }
    manifest = ov_backend.ir_manifest(
        xml,
        started,
        {"description": describe_host()},
        source_onnx_sha256=sha256_of_file(model_path),
        source_metadata=metadata.to_dict() if metadata else {},
        precision=options.precision,
        recipe=recipe,
        calibration=calibration,
        build_options={
            key: value
            for key, value in {**options.to_dict(), "target": "openvino"}.items()
            if key not in ("calib_method", "percentile", "quantize_se")  # NNCF's recipe, recorded in `recipe`
        },
        sedeploy_version=__version__,
    )
    write_manifest(manifest, xml)
    check_images = images if images is not None else _random_images(proto, metadata)
    fidelity = _check_on_openvino(model_path, xml, check_images, input_name)
    return BuildResult(
        backend="openvino",
        backend_reason=reason,
        precision=options.precision,
        artifacts=(xml,),
        manifests=(manifest,),
        fidelity=fidelity,
        calibration=calibration,
        seconds=time.perf_counter() - started,
    )


def _check_on_openvino(reference_path: Path, xml: Path, images: np.ndarray, input_name: str) -> Comparison:
    from sedeploy.backends.openvino import OpenVinoRunner

    reference = ort_backend.create_session(reference_path, ["CPUExecutionProvider"])
    batch = np.ascontiguousarray(images[:_CHECK_IMAGES], dtype=np.float32)
    with OpenVinoRunner(xml) as runner:
        candidate = runner(batch)
    fidelity = compare_logits(reference.run(None, {input_name: batch})[0], candidate)
    if not fidelity.finite:
        raise PrecisionError(f"the OpenVINO IR {xml.name} gives non-finite logits; nothing usable was built")
    return fidelity


def _make_precision_file(
    model_path: Path,
    staged_path: Path | None,
    proto: onnx.ModelProto,
    metadata: ModelMetadata | None,
    options: BuildOptions,
    target: str,
    input_name: str,
    calibration_set: CalibrationSet | None,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, Any] | None, Comparison | None]:
    """Write the FP16 or INT8 graph to ``staged_path`` and check it on ONNX Runtime against FP32.

    Returns the recipe, the calibration record and the fidelity. Without a
    ``staged_path`` (FP32, or TensorRT's implicit INT8) nothing is written.
    """
    if staged_path is None:
        return {}, None, None
    calibration: dict[str, Any] | None = None
    if options.precision == "fp16":
        recipe = convert_fp16(model_path, staged_path, options.fp16_block_list)
    else:
        assert calibration_set is not None
        int8 = Int8Recipe(
            flavour=target,
            method=options.calib_method,
            percentile=options.percentile,
            quantize_se=options.quantize_se,
        )
        ranges, reused = calibrate_cached(
            model_path,
            calibration_set.images,
            input_name,
            int8,
            calibration_set.report.dataset_sha256,
            recalibrate=options.recalibrate,
            progress=progress,
        )
        recipe = quantize_int8(model_path, staged_path, ranges, int8, calibration_set.images)
        calibration = {
            "method": int8.method,
            "percentile": int8.percentile if int8.method == "percentile" else None,
            "images": calibration_set.report.used,
            "found": calibration_set.report.found,
            "skipped": [{"path": s.path, "reason": s.reason} for s in calibration_set.report.skipped],
            "dataset_sha256": calibration_set.report.dataset_sha256,
            "folder": calibration_set.report.folder,
            "reused": reused,
            "tensors": len(ranges.ranges),
        }
    check_images = calibration_set.images if calibration_set is not None else _random_images(proto, metadata)
    fidelity = _check_on_onnxruntime(model_path, staged_path, check_images, input_name)
    if not fidelity.finite:
        raise PrecisionError(f"the {options.precision} graph gives non-finite logits; nothing was written")
    if options.precision == "fp16" and fidelity.mean_cosine < FP16_MIN_COSINE:
        raise PrecisionError(
            f"FP16 logits drift from FP32 (mean cosine {fidelity.mean_cosine:.5f} < {FP16_MIN_COSINE}); "
            "keep more ops in FP32 with --fp16-block-list"
        )
    return recipe, calibration, fidelity


def _manifest(
    path: Path, backend: str, device: dict[str, Any], started: float, **common: Any
) -> BuildManifest:
    return BuildManifest(
        artifact=path.name,
        artifact_sha256=sha256_of_file(path),
        artifact_format="onnx",
        backend=backend,
        backend_version=ort_backend.version(),
        device=device,
        build_seconds=round(time.perf_counter() - started, 3),
        **common,
    )


def _random_images(proto: onnx.ModelProto, metadata: ModelMetadata | None) -> np.ndarray:
    if metadata is not None:
        shape: tuple[int, ...] = metadata.input_size
    else:
        dims = proto.graph.input[0].type.tensor_type.shape.dim[1:]
        shape = tuple(int(d.dim_value) or 1 for d in dims)
    return np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
