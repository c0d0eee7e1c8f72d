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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sedeploy._version import __version__
from sedeploy.artifacts import naming
from sedeploy.artifacts.manifest import (
    BuildManifest,
    commit_with_manifests,
    manifest_path,
    matching_manifest,
    write_manifest,
)
from sedeploy.artifacts.metadata import ModelMetadata, load_onnx, metadata_or_none
from sedeploy.artifacts.precision import graph_precision
from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.backends.audit import (
    DEFAULT_MIN_PRECISION_SHARE,
    PrecisionAudit,
    audit_gate,
    audit_onnxruntime,
    format_shares,
    gate_applies,
)
from sedeploy.backends.tensorrt.compat import TensorRTOptions, resolve_batch_profile
from sedeploy.compare import DEFAULT_THRESHOLDS, Comparison, compare_logits, parity_failures
from sedeploy.data import ImageSet, load_image_set, preprocessing_for
from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError, SedeployError
from sedeploy.files import check_writable, folder_lock, pause_for_tests, sha256_of_file, temp_path_beside
from sedeploy.host import cpu_features, describe_host
from sedeploy.precision import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_FP16_BLOCK_LIST,
    DEFAULT_PERCENTILE,
    HIGH_PRECISIONS,
    Int8Recipe,
    PrecisionError,
    calibrate_cached,
    convert_fp16,
    fidelity_optimization_level,
    quantize_int8,
)
from sedeploy.progress import stage
from sedeploy.sweep import sweep_calibration

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_CALIBRATION_DIR = Path("calibration")
DEFAULT_CALIBRATION_SIZE = 512
FP16_MIN_COSINE = 0.999
"""Below this, an FP16 graph is refused: FP16 rounding alone stays far above it on a sane model."""
_CHECK_IMAGES = 64
DEFAULT_PROBE_BATCHES = (1, 8)
DEFAULT_PROBE_SECONDS = 2.0


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

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; valid values: {', '.join(PRECISIONS)}")
        if self.precision == "bf16" and self.backend != "openvino":
            raise ConfigError(
                "precision 'bf16' is built for OpenVINO only (ONNX Runtime has no faster BF16 path on a CPU); "
                "pass backend='openvino'"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; valid values: {', '.join(BACKENDS)}")
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
        if self.implicit_int8 and (self.precision != "int8" or self.backend != "tensorrt"):
            raise ConfigError("implicit_int8 needs an int8 build with backend tensorrt", params=("backend",))
        onnx_only = {
            "calib_method": self.calib_method != DEFAULT_CALIBRATION_METHOD,
            "percentile": self.percentile != DEFAULT_PERCENTILE,
            "quantize_se": self.quantize_se is not None,
            "target": self.target is not None,
            "high_precision": self.high_precision is not None,
        }
        if self.backend == "openvino" and any(onnx_only.values()):
            given = ", ".join(name for name, set_ in onnx_only.items() if set_)
            raise ConfigError(
                f"{given} shape the ONNX Q/DQ recipe; OpenVINO's INT8 comes from NNCF's own recipe, so drop them "
                "with backend openvino",
                params=("percentile", "target", "backend"),
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
            "tensorrt": self.tensorrt.to_dict(),
            "gate": self.gate,
            "float_type": self.float_type,
            "hint": self.hint,
            "high_precision": self.high_precision,
            "min_precision_share": self.min_precision_share,
            "sweep_data": str(self.sweep_data) if self.sweep_data else None,
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


@dataclass(frozen=True)
class SourceModel:
    """The ONNX a build starts from, read once: path, parsed graph, metadata, sha256 and precision.

    Handed down through :func:`build_engine` so no step re-reads or re-hashes the file.
    """

    path: Path
    proto: onnx.ModelProto
    metadata: ModelMetadata | None
    sha256: str
    precision: str

    @property
    def input_name(self) -> str:
        return self.metadata.input_name if self.metadata else _input_name(self.proto)


def read_source(model_path: Path) -> SourceModel:
    """The source ONNX and its metadata; a graph input that contradicts the metadata is refused."""
    proto = load_onnx(model_path)
    metadata = metadata_or_none(proto)
    if metadata is not None:
        graph_input = next(i for i in proto.graph.input if i.name == _input_name(proto))
        shape = [dim.dim_value or dim.dim_param or None for dim in graph_input.type.tensor_type.shape.dim]
        problem = metadata.input_mismatch(graph_input.name, shape)
        if problem is not None:
            raise BadInputError(f"{model_path}: {problem}; export it again with sedeploy export")
    manifest = matching_manifest(model_path)
    precision = manifest.precision if manifest is not None else graph_precision(proto)
    return SourceModel(model_path, proto, metadata, sha256_of_file(model_path), precision)


def _refuse_what_cannot_apply(source: SourceModel, options: BuildOptions) -> None:
    """Options that this source cannot honour are refused, never dropped."""
    if source.precision != "fp32" and options.precision != "fp32":
        start = _fp32_source_name(source)
        raise ConfigError(
            f"{source.path} is already {source.precision}; build {options.precision} from the FP32 export "
            f"({start}), or build this file as it is without fp16/int8"
        )
    metadata = source.metadata
    overrides = options.preprocessing_overrides
    if metadata is not None:
        fixed = {"img_size": tuple(metadata.input_size[1:]), "channels": metadata.input_size[0]}
        for name, value in overrides.items():
            given = tuple(value) if name == "img_size" and value is not None else value
            if name in fixed and given is not None and given != fixed[name]:
                shown = "x".join(map(str, given)) if isinstance(given, tuple) else given
                raise ConfigError(
                    f"{name} {shown} contradicts {source.path}'s metadata (its input is "
                    f"{'x'.join(map(str, metadata.input_size))}, fixed at export); drop {name}, or export the model "
                    "again at that size",
                    params=("channels",),
                )


def _fp32_source_name(source: SourceModel) -> str:
    """The FP32 file ``source`` was built from, named by its manifest, or the usual export name."""
    manifest = matching_manifest(source.path)
    if manifest is not None:
        for candidate in sorted(source.path.parent.glob("*.onnx")):
            if candidate != source.path and sha256_of_file(candidate) == manifest.source_onnx_sha256:
                return str(candidate)
    return str(source.path.with_name(source.path.name.split(".")[0] + ".onnx"))


def _parity_gate(
    precision: str, fidelity: Comparison, options: BuildOptions, calibrated_on: int | None
) -> str | None:
    """Fail (or, with ``gate=False``, note) an FP16/INT8 file whose parity misses verify's thresholds."""
    thresholds = DEFAULT_THRESHOLDS[precision]
    failures = parity_failures(fidelity, thresholds)
    if not failures:
        return None
    if precision == "int8":
        fix = (
            "quantize_se=False (keeps the SE gate in float), another calib_method, or more calibration images "
            f"(calib_size; {calibrated_on} used)"
        )
    else:
        fix = "more ops in float with fp16_block_list"
    problem = f"{precision} parity below verify's thresholds ({'; '.join(failures)})"
    if options.gate:
        raise PrecisionError(f"{problem}: nothing was published; try {fix}, or gate=False to publish anyway")
    return f"{problem}; published anyway (gate=False, recorded in the manifest)"


def _input_name(proto: onnx.ModelProto) -> str:
    initializers = {init.name for init in proto.graph.initializer}
    return next(i.name for i in proto.graph.input if i.name not in initializers)


def _calibration_set(model_path: Path, options: BuildOptions, progress: bool) -> ImageSet:
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


SMALL_CALIBRATION_SET = 300
"""Fewer calibration images than this give ranges that vary from one sample to the next: said with a warning."""


def _calibration_notes(calibration_set: ImageSet | None) -> tuple[str, ...]:
    if calibration_set is None or calibration_set.report.used >= SMALL_CALIBRATION_SET:
        return ()
    note = (
        f"calibrated on {calibration_set.report.used} images; a few hundred or more "
        f"(>= {SMALL_CALIBRATION_SET}) give steadier INT8 ranges"
    )
    logger.warning(note)
    return (note,)


def _check_on_onnxruntime(
    reference_path: Path,
    candidate_path: Path,
    images: np.ndarray,
    input_name: str,
    optimization_level: str = "all",
) -> Comparison:
    reference = ort_backend.create_session(reference_path, ["CPUExecutionProvider"])
    candidate = ort_backend.create_session(
        candidate_path, ["CPUExecutionProvider"], optimization_level=optimization_level
    )
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
    source = read_source(model_path)
    proto, metadata = source.proto, source.metadata
    _refuse_what_cannot_apply(source, options)
    if output is not None:
        check_writable(output)
    if options.tensorrt.profile is not None:  # a bad profile is a usage error even where TensorRT is missing
        resolve_batch_profile(options.tensorrt.profile, metadata.max_batch if metadata else None)
    backend, backend_reason = choose_backend(options.backend)
    if backend != "tensorrt" and options.tensorrt.given():
        raise ConfigError(
            f"TensorRT options {', '.join(options.tensorrt.given())} cannot apply: this build runs on {backend} "
            f"({backend_reason}); drop them, or build with backend tensorrt where TensorRT and a GPU are present",
            params=("backend", *options.tensorrt.given()),
        )
    if options.backend == "auto" and backend == "onnxruntime":
        not_probed = _why_not_probed(options, output)
        if not_probed is None:
            return _build_auto_cpu(model_path, options, progress, started, backend_reason)
        backend_reason = f"{backend_reason}; {not_probed}"
    if output is not None:
        _check_output_suffix(Path(output), backend)
    logger.info("backend %s (%s)", backend, backend_reason)
    input_name = source.input_name
    target = options.target or ("tensorrt" if backend == "tensorrt" or ort_backend.has_cuda() else "cpu")

    calibration_set: ImageSet | None = None
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
            else naming.precision_onnx_path(model_path, options.precision, flavour)
        )
        # Written and checked under a temporary name, renamed into place only once it passed.
        staged_path = temp_path_beside(precision_path)
    notes = _calibration_notes(calibration_set) if options.precision == "int8" else ()
    # Without fp16/int8 a precision file is built as it is: the artifact is what the source is.
    built_precision = options.precision if options.precision != "fp32" else source.precision
    try:
        recipe, calibration, fidelity, gate_note = _make_precision_file(
            model_path, staged_path, proto, metadata, options, target, input_name, calibration_set, progress
        )
        notes += (gate_note,) if gate_note else ()
        common = dict(
            source_onnx_sha256=source.sha256,
            source_metadata=metadata.to_dict() if metadata else {},
            precision=built_precision,
            recipe=recipe,
            calibration=calibration,
            build_options={**options.to_dict(), "target": flavour or options.target},
            sedeploy_version=__version__,
        )
        artifacts: list[Path] = []
        manifests: list[BuildManifest] = []
        precision_audit: PrecisionAudit | None = None
        if backend == "onnxruntime":
            with stage("build: ONNX Runtime optimized graph", progress):
                artifacts, manifests, precision_audit = _publish_onnxruntime(
                    model_path,
                    precision_path,
                    staged_path,
                    output,
                    started,
                    common,
                    options.min_precision_share,
                )
            if (
                not gate_applies("onnxruntime", recipe, built_precision, ort_backend.has_cuda())
                and precision_audit
            ):
                notes += (
                    f"{built_precision} runs as {format_shares(precision_audit.shares())} of the MACs on ONNX Runtime "
                    "here: the file is the portable one for TensorRT and GPUs"
                    + (
                        "; for 16-bit floats on a CPU, build bf16 with the openvino backend where the CPU has BF16 units"
                        if built_precision == "fp16"
                        else "; for INT8 on a CPU, build the cpu flavour"
                    ),
                )
        else:
            from sedeploy.backends import tensorrt as trt_backend

            if staged_path is not None:
                # TensorRT builds from the precision ONNX in place. A manifest beside it from an earlier
                # ONNX Runtime build describes other bytes now: it goes in the same locked step.
                with folder_lock(precision_path.parent):
                    os.replace(staged_path, precision_path)
                    manifest_path(precision_path).unlink(missing_ok=True)
            engine_path = Path(output) if output else naming.engine_path(precision_path)
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
                **options.tensorrt.builder_kwargs(),
                **legacy,
            )
            artifacts.append(engine_path)
            manifests.append(engine_manifest)
            precision_audit = _audit_engine(engine_path, engine_manifest, model_path, options)
    finally:
        if staged_path is not None:
            staged_path.unlink(missing_ok=True)
    return BuildResult(
        backend=backend,
        backend_reason=backend_reason,
        precision=built_precision,
        artifacts=tuple(artifacts),
        manifests=tuple(manifests),
        fidelity=fidelity,
        calibration=calibration,
        seconds=time.perf_counter() - started,
        notes=notes,
        precision_audit=precision_audit,
    )


def _audit_engine(
    engine_path: Path, manifest: BuildManifest, model_path: Path, options: BuildOptions
) -> PrecisionAudit:
    """Audit a built engine (its inspector JSON), record it in its manifest, and fail it below the asked share."""
    from sedeploy.backends.audit import audit_tensorrt

    precision_audit = audit_tensorrt(engine_path, source=model_path)
    write_manifest(replace(manifest, precision_audit=precision_audit.to_dict()), engine_path)
    try:
        audit_gate(manifest.precision, precision_audit, options.min_precision_share)
    except PrecisionError:
        engine_path.unlink(missing_ok=True)
        manifest_path(engine_path).unlink(missing_ok=True)
        raise
    return precision_audit


def _check_output_suffix(output: Path, backend: str) -> None:
    """Refuse an ``-o`` whose suffix :func:`sedeploy.load` would open with another backend than the one building it."""

    suffixes = {"onnxruntime": ".onnx", "tensorrt": ".engine", "openvino": ".xml"}
    if (
        output.suffix.lower() in (".onnx", ".engine", ".plan", ".xml")
        and naming.artifact_backend(output) == backend
    ):
        return
    raise ConfigError(
        f"output {output} is not a {backend} artifact name; end it with {suffixes[backend]} "
        f"(or pick the backend with backend)",
        params=("output", "backend"),
    )


def _why_not_probed(options: BuildOptions, output: str | Path | None) -> str | None:
    """Why ``auto`` keeps ONNX Runtime without probing OpenVINO, or None when the probe can run."""
    from sedeploy.backends import openvino as ov_backend

    if ort_backend.has_cuda():
        return "ONNX Runtime runs on CUDA here"
    onnx_only = {
        "--target": options.target is not None,
        "--calib-method": options.calib_method != DEFAULT_CALIBRATION_METHOD,
        "--percentile": options.percentile != DEFAULT_PERCENTILE,
        "--quantize-se/--float-se": options.quantize_se is not None,
        "-o": output is not None,
    }
    given = [flag for flag, set_ in onnx_only.items() if set_]
    if given:
        return f"OpenVINO not probed: {', '.join(given)} given (use --backend openvino for an IR)"
    try:
        ov_backend.require_available()
    except MissingDependencyError:
        from sedeploy.host import matrix_units

        fast = matrix_units().best("int8")
        tip = (
            f"; this CPU has {fast}, on which the openvino extra runs INT8 faster"
            if fast in ("AMX-INT8", "AVX512-VNNI", "AVX-VNNI")
            else ""
        )
        return f"OpenVINO not probed: not installed (pip install 'sedeploy[openvino]'){tip}"
    return None


def _build_auto_cpu(
    model_path: Path, options: BuildOptions, progress: bool, started: float, reason: str
) -> BuildResult:
    """``auto`` on a CPU: the :mod:`sedeploy.search` over ONNX Runtime and OpenVINO with the build's own gate.

    Both are built beside the model as usual (each passes its own parity gate), timed
    interleaved at ``options.probe_batches`` (ranked on the geometric mean), and both kept;
    the winner's artifacts come first. Both manifests record the search under
    ``build_options.auto_probe``. OpenVINO runs as ``sedeploy.load`` opens it (the float
    type and hint its build measured), ONNX Runtime with its optimized graph.
    """
    from sedeploy.runtime import load
    from sedeploy.search import Built, Fidelity, Plan, search

    built: dict[str, BuildResult] = {}
    errors: list[SedeployError] = []

    def build(plan: Plan) -> Built:
        try:
            result = build_engine(model_path, replace(options, backend=plan.backend), progress=progress)
        except SedeployError as error:
            errors.append(error)
            raise
        built[plan.backend] = result
        fidelity = result.fidelity
        gate = (
            Fidelity.from_comparison(fidelity, "the build's check images") if fidelity is not None else None
        )
        artifact = result.artifacts[-1] if plan.backend == "onnxruntime" else result.artifacts[0]
        shares = result.precision_audit.shares() if result.precision_audit else None
        return Built(artifact, shares=shares, gate=gate, seconds=result.seconds)

    plans = [Plan.of(name, options.precision) for name in ("onnxruntime", "openvino")]
    report = search(
        plans,
        build,
        lambda plan, result, threads: load(result.artifact),
        batches=options.probe_batches,
        seconds=2 * options.probe_seconds,
        rounds=2,
        probe_seconds=0.2,
    )  # no bar of its own: each build shows its progress, and a failing one's error stays the only line
    if errors:  # an asked build failed: the same error as building that backend alone
        raise errors[0]
    winner_row = report.winner
    assert winner_row is not None  # both built and passed their gates: one is the fastest
    winner = winner_row.plan.backend
    loser = "onnxruntime" if winner == "openvino" else "openvino"
    # the run-off's figures where it ran (both within 10%: timed again, together), else the first run's
    rates = {row.plan.backend: dict(row.runoff_images_per_s or row.images_per_s) for row in report.rows}
    edge = {batch: rates[winner][batch] / rates[loser][batch] for batch in options.probe_batches}
    last = max(edge)

    def compared(ratio: float) -> str:
        return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"

    others = ", ".join(f"{compared(edge[batch])} at batch {batch}" for batch in sorted(edge) if batch != last)
    decision = (
        f"auto: {winner} is {compared(edge[last])} than {loser} at batch {last}"
        + (f" ({others})" if others else "")
        + f" on this machine; using {winner}"
        + ("" if winner_row.reason.startswith("fastest within the budget") else f" ({winner_row.reason})")
    )
    logger.info(decision)
    probe = {
        "winner": winner,
        "decision": decision,
        "batches": list(options.probe_batches),
        "seconds_per_backend_and_batch": options.probe_seconds,
        "images_per_s": {
            name: {str(b): round(r, 2) for b, r in by_batch.items()} for name, by_batch in rates.items()
        },
        "openvino_vs_onnxruntime": {
            str(batch): round(rates["openvino"][batch] / rates["onnxruntime"][batch], 3)
            for batch in options.probe_batches
        },
        "artifacts": {row.plan.backend: row.artifact for row in report.rows},
        "machine": report.machine["description"],
        "search": report.to_dict(),
    }
    recorded: dict[str, tuple[BuildManifest, ...]] = {}
    for name, result in built.items():
        recorded[name] = tuple(
            replace(
                manifest, build_options={**manifest.build_options, "backend": "auto", "auto_probe": probe}
            )
            for manifest in result.manifests
        )
        for path, manifest in zip(result.artifacts, recorded[name], strict=True):
            with folder_lock(path.parent):  # only if no other build published this path since
                if sha256_of_file(path) == manifest.artifact_sha256:
                    write_manifest(manifest, path)
    chosen, other = built[winner], built[loser]
    return BuildResult(
        backend=winner,
        backend_reason=f"{decision}; {reason}",
        precision=options.precision,
        artifacts=chosen.artifacts + other.artifacts,
        manifests=recorded[winner] + recorded[loser],
        fidelity=chosen.fidelity,
        calibration=chosen.calibration,
        seconds=time.perf_counter() - started,
        probe=probe,
        precision_audit=chosen.precision_audit,
    )


def _build_openvino(
    model_path: Path,
    proto: onnx.ModelProto,
    metadata: ModelMetadata | None,
    options: BuildOptions,
    output: str | Path | None,
    calibration_set: ImageSet | None,
    started: float,
    reason: str,
) -> BuildResult:
    """The OpenVINO IR of the FP32 ONNX: NNCF quantizes INT8 from the FP32 graph on the calibration set.

    The IR's float type and hint are measured here at ``options.probe_batches`` (or pinned by the options'
    ``float_type`` / ``hint``), recorded in the manifest, and the fidelity check runs the IR that way.
    """
    from sedeploy.backends import openvino as ov_backend

    xml = Path(output) if output else naming.openvino_path(model_path, options.precision)
    images = calibration_set.images if calibration_set is not None else None
    input_name = metadata.input_name if metadata else _input_name(proto)
    stem = [node.name for node in proto.graph.node if node.op_type == "Conv" and node.input[0] == input_name]
    xml.parent.mkdir(parents=True, exist_ok=True)
    # Built, hashed and checked in a staging folder, then published with its manifest as one unit.
    with tempfile.TemporaryDirectory(prefix=".sedeploy-stage-", dir=xml.parent) as stage:
        staged_xml = Path(stage) / xml.name
        recipe = ov_backend.build_ir(model_path, staged_xml, options.precision, images, stem[:1])
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

        def manifest_with(runtime: dict[str, Any] | None) -> BuildManifest:
            return ov_backend.ir_manifest(
                staged_xml,
                started,
                {"description": describe_host()},
                runtime,
                source_onnx_sha256=sha256_of_file(model_path),
                source_metadata=metadata.to_dict() if metadata else {},
                precision=options.precision,
                recipe=recipe,
                calibration=calibration,
                build_options={  # without the ONNX-recipe options: NNCF's own recipe is recorded in `recipe`
                    key: value
                    for key, value in {**options.to_dict(), "target": "openvino"}.items()
                    if key not in ("calib_method", "percentile", "quantize_se")
                },
                sedeploy_version=__version__,
            )

        write_manifest(manifest_with(None), staged_xml)  # the probe loads the staged IR as a runner would
        runtime = ov_backend.choose_runtime(
            staged_xml,
            options.precision,
            options.probe_batches,
            options.probe_seconds / 4,
            float_type=options.float_type,
            hint=options.hint,
        )
        manifest = manifest_with(runtime)
        write_manifest(
            manifest, staged_xml
        )  # the check below runs the IR as the runner will: recorded choice
        check_images = images if images is not None else _random_images(proto, metadata)
        fidelity = _check_on_openvino(model_path, staged_xml, check_images, input_name, options.precision)
        gate_note = (
            _parity_gate(
                options.precision, fidelity, options, calibration_set.report.used if calibration_set else None
            )
            if options.precision != "fp32"
            else None
        )
        from sedeploy.backends.audit import audit_openvino

        precision_audit = audit_openvino(staged_xml, source=model_path)
        audit_gate(
            options.precision,
            precision_audit,
            options.min_precision_share,
            intended_float=manifest.recipe.get("float_nodes") or (),
        )
        manifest = replace(manifest, precision_audit=precision_audit.to_dict())
        write_manifest(manifest, staged_xml)
        pause_for_tests("publish")
        commit_with_manifests(
            [(staged_xml.with_suffix(".bin"), xml.with_suffix(".bin")), (staged_xml, xml)], [(manifest, xml)]
        )
    return BuildResult(
        backend="openvino",
        backend_reason=f"{reason}; {options.precision} IR {ov_backend.describe_choice(manifest.engine or {})}",
        precision=options.precision,
        artifacts=(xml,),
        manifests=(manifest,),
        fidelity=fidelity,
        calibration=calibration,
        seconds=time.perf_counter() - started,
        precision_audit=precision_audit,
        notes=(_calibration_notes(calibration_set) if options.precision == "int8" else ())
        + ((gate_note,) if gate_note else ()),
    )


def _check_on_openvino(
    reference_path: Path, xml: Path, images: np.ndarray, input_name: str, precision: str = "fp32"
) -> Comparison:
    """Run the staged IR as its manifest says (float type, hint) against FP32 on ONNX Runtime.

    Non-finite logits are refused; an FP16 or BF16 IR must also keep the FP16 gate (mean cosine
    :data:`FP16_MIN_COSINE`) and the top-1 agreement :data:`~sedeploy.backends.openvino.FLOAT_MIN_TOP1`.
    """
    from sedeploy.backends.openvino import FLOAT_MIN_TOP1, OpenVinoRunner

    reference = ort_backend.create_session(reference_path, ["CPUExecutionProvider"])
    batch = np.ascontiguousarray(images[:_CHECK_IMAGES], dtype=np.float32)
    runner = OpenVinoRunner(xml)
    with runner:
        candidate = runner(batch)
    fidelity = compare_logits(reference.run(None, {input_name: batch})[0], candidate)
    if not fidelity.finite:
        raise PrecisionError(f"the OpenVINO IR {xml.name} gives non-finite logits; nothing usable was built")
    if precision in ("fp16", "bf16") and (
        fidelity.mean_cosine < FP16_MIN_COSINE or fidelity.top1_agreement < FLOAT_MIN_TOP1
    ):
        raise PrecisionError(
            f"the {precision} IR run in {runner.float_type} drifts from FP32 (mean cosine {fidelity.mean_cosine:.5f}, "
            f"need {FP16_MIN_COSINE}; top-1 agreement {100 * fidelity.top1_agreement:.1f}%, need "
            f"{100 * FLOAT_MIN_TOP1:.0f}%); build precision='fp32' or 'int8' instead"
        )
    return fidelity


def _make_precision_file(
    model_path: Path,
    staged_path: Path | None,
    proto: onnx.ModelProto,
    metadata: ModelMetadata | None,
    options: BuildOptions,
    target: str,
    input_name: str,
    calibration_set: ImageSet | None,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, Any] | None, Comparison | None, str | None]:
    """Write the FP16 or INT8 graph to ``staged_path`` and check it on ONNX Runtime against FP32.

    Returns the recipe, the calibration record, the fidelity and the parity gate's note (None: passed).
    Without a ``staged_path`` (FP32, or TensorRT's implicit INT8) nothing is written.
    """
    if staged_path is None:
        return {}, None, None, None
    calibration: dict[str, Any] | None = None
    if options.precision == "fp16":
        with stage("build: FP16 conversion", progress):
            recipe = convert_fp16(model_path, staged_path, options.fp16_block_list)
    else:
        assert calibration_set is not None
        int8 = Int8Recipe(
            flavour=target,
            method=DEFAULT_CALIBRATION_METHOD if options.calib_method == "sweep" else options.calib_method,
            percentile=options.percentile,
            quantize_se=options.quantize_se,
            high_precision=options.high_precision,
        )
        sweep: dict[str, Any] | None = None
        if options.calib_method == "sweep":
            assert options.sweep_data is not None
            preprocessing, channels = preprocessing_for(model_path, **options.preprocessing_overrides)
            held_out = load_image_set(options.sweep_data, preprocessing, channels, progress=progress)
            report = sweep_calibration(
                model_path,
                calibration_set.images,
                input_name,
                calibration_set.report.dataset_sha256,
                held_out.images,
                held_out.labels,
                base=int8,
                progress=progress,
            )
            int8, sweep = report.best.recipe, report.to_dict()
        ranges, reused = calibrate_cached(
            model_path,
            calibration_set.images,
            input_name,
            int8,
            calibration_set.report.dataset_sha256,
            recalibrate=options.recalibrate,
            progress=progress,
        )
        with stage("build: INT8 Q/DQ", progress):
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
            "parameters": int8.calibration_parameters(),
            "sweep": sweep,
        }
    check_images = calibration_set.images if calibration_set is not None else _random_images(proto, metadata)
    with stage(f"build: {options.precision} parity check", progress):
        fidelity = _check_on_onnxruntime(
            model_path, staged_path, check_images, input_name, fidelity_optimization_level(recipe)
        )
    if not fidelity.finite:
        raise PrecisionError(f"the {options.precision} graph gives non-finite logits; nothing was written")
    if options.precision == "fp16" and fidelity.mean_cosine < FP16_MIN_COSINE:
        raise PrecisionError(
            f"FP16 logits drift from FP32 (mean cosine {fidelity.mean_cosine:.5f} < {FP16_MIN_COSINE}); "
            "keep more ops in FP32 with fp16_block_list"
        )
    gate_note = _parity_gate(
        options.precision, fidelity, options, calibration_set.report.used if calibration_set else None
    )
    recipe = {**recipe, "parity_gate": "passed" if gate_note is None else "failed, published with gate=False"}
    return recipe, calibration, fidelity, gate_note


def _publish_onnxruntime(
    model_path: Path,
    precision_path: Path,
    staged_path: Path | None,
    output: str | Path | None,
    started: float,
    common: dict[str, Any],
    min_precision_share: float = DEFAULT_MIN_PRECISION_SHARE,
) -> tuple[list[Path], list[BuildManifest], PrecisionAudit]:
    """Write ONNX Runtime's optimized graph, audit it, then publish it, the precision ONNX and their manifests as one unit.

    ``staged_path`` is the checked precision ONNX under its temporary name (None
    for FP32). Everything is staged first and renamed into place together under
    the folder's lock (:func:`~sedeploy.artifacts.manifest.commit_with_manifests`), so an
    interrupted or concurrent build never leaves an artifact beside another
    build's manifest. A graph whose asked precision covers less than
    ``min_precision_share`` of the MACs once optimized is not published (:func:`audit_gate`).
    """
    providers = ort_backend.default_providers()
    device = {"description": describe_host(), "providers": providers, "cpu_features": list(cpu_features())}
    artifacts: list[Path] = []
    manifests: list[BuildManifest] = []
    staged: list[tuple[Path, Path]] = []
    optimized_path = (
        Path(output)
        if output and staged_path is None  # FP32: the optimized graph is what -o names
        else naming.optimized_onnx_path(precision_path)
    )
    optimized_staged = temp_path_beside(optimized_path)
    try:
        ort_backend.write_optimized_model(staged_path or model_path, optimized_staged, providers)
        precision_audit = audit_onnxruntime(optimized_staged, source=model_path, already_optimized=True)
        if gate_applies("onnxruntime", common["recipe"], common["precision"], ort_backend.has_cuda()):
            audit_gate(common["precision"], precision_audit, min_precision_share)
        common = {**common, "precision_audit": precision_audit.to_dict()}
        if staged_path is not None:
            manifests.append(_manifest(precision_path, "onnxruntime", device, started, staged_path, **common))
            artifacts.append(precision_path)
            staged.append((staged_path, precision_path))
        staged.append((optimized_staged, optimized_path))
        optimized_device = {**device, "optimization_level": "all"}
        manifests.append(
            _manifest(optimized_path, "onnxruntime", optimized_device, started, optimized_staged, **common)
        )
        artifacts.append(optimized_path)
        pause_for_tests("publish")
        commit_with_manifests(staged, list(zip(manifests, artifacts, strict=True)))
    finally:
        optimized_staged.unlink(missing_ok=True)
    return artifacts, manifests, precision_audit


def _manifest(
    path: Path,
    backend: str,
    device: dict[str, Any],
    started: float,
    staged: Path | None = None,
    **common: Any,
) -> BuildManifest:
    """The manifest of the artifact that will be published at ``path``, hashed from ``staged`` (default ``path``)."""
    return BuildManifest(
        artifact=path.name,
        artifact_sha256=sha256_of_file(staged or path),
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
