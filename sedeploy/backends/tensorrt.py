"""TensorRT backend: build an engine from a precision ONNX file, and run it with pinned memory.

Builder (:func:`build_engine`): the ONNX file from the precision stage (FP32,
FP16-typed or Q/DQ INT8) is parsed into a strongly typed network, so the file's
own types decide the precision; one optimization profile covers the dynamic batch
(``MIN:OPT:MAX``, capped by the ``max_batch`` the export recorded); a timing cache
file is reused across builds. The engine is a plain TensorRT plan; its manifest
(TensorRT version, GPU, profile, precision, source sha256) is written beside it.

Runner (:class:`TensorRTRunner`): checks the manifest against this machine before
TensorRT sees the plan, then runs batches through pinned host buffers and device
buffers allocated once for the profile's largest batch, from a small pool of
execution contexts; :meth:`TensorRTRunner.stream` double-buffers many batches.

TensorRT 10 and 11 differ (11 builds strongly typed networks only: no FP16/INT8
builder flags, no calibrators). Differences are found with ``hasattr`` on the
module, enum or object, never from the version string. ``tensorrt`` and
``pycuda`` are imported only when a build or a runner is asked for; the pure
logic (profiles, manifest decisions, batch splitting) runs without them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsInt

import numpy as np
import onnx

from sedeploy import cuda_memory
from sedeploy.backends.base import Runner, RunnerClosedError, TensorSpec
from sedeploy.errors import BadInputError, SedeployError
from sedeploy.files import atomic_output, sha256_of_file
from sedeploy.manifest import (
    BuildManifest,
    ManifestError,
    checked_manifest,
    manifest_path,
    read_manifest,
    write_with_manifest,
)
from sedeploy.metadata import ModelMetadata, read_metadata
from sedeploy.optional import import_optional

if TYPE_CHECKING:
    import tensorrt as trt
    from typing_extensions import Buffer

logger = logging.getLogger(__name__)

EXTRA = "tensorrt"
DEFAULT_BATCH = (1, 8, 32)
"""Default ``MIN:OPT:MAX`` batch profile; MAX (and OPT) are capped by the ONNX metadata's ``max_batch``."""
OPT_LEVELS = range(0, 6)
"""TensorRT's builder optimization levels (3 is its default)."""
AMPERE_MAJOR = 8
"""Hardware-compatible (Ampere-plus) engines need compute capability 8.0 or higher."""
ProgressCallback = Callable[[str, int, int], None]
"""Called as ``(phase, steps done, steps in phase)`` while TensorRT builds."""


class EngineBuildError(SedeployError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class BatchProfileError(BadInputError):
    """A ``--batch MIN:OPT:MAX`` profile is malformed or outside what the model allows."""

    exit_code = 2


class EngineMismatchError(ManifestError):
    """An engine was built for another TensorRT version or GPU than this machine's."""


class EngineRunError(SedeployError):
    """TensorRT failed while running an engine."""


# Pure logic, testable without TensorRT or a GPU.


@dataclass(frozen=True)
class BatchProfile:
    """The dynamic batch range an engine is built for: smallest, tuned-for and largest batch."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 1:
            raise BatchProfileError(f"batch profile {self}: the smallest batch must be at least 1")
        if not self.min <= self.opt <= self.max:
            raise BatchProfileError(f"batch profile {self} must satisfy MIN <= OPT <= MAX")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def parse_batch_profile(text: str) -> BatchProfile:
    """Parse ``MIN:OPT:MAX`` (or a single ``N`` meaning ``N:N:N``) into a :class:`BatchProfile`."""
    parts = text.strip().split(":")
    if len(parts) not in (1, 3):
        raise BatchProfileError(f"batch profile {text!r} must be MIN:OPT:MAX (e.g. 1:8:32) or one size")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise BatchProfileError(f"batch profile {text!r} must hold whole numbers, e.g. 1:8:32") from None
    if len(sizes) == 1:
        sizes *= 3
    return BatchProfile(*sizes)


def resolve_batch_profile(requested: BatchProfile | str | None, model_max_batch: int | None) -> BatchProfile:
    """The profile to build: the request checked against the model's ``max_batch``, or the capped default.

    The default 1:8:32 shrinks to fit a smaller ``max_batch``; an explicit profile
    whose MAX exceeds it is refused, since the export promised no more.
    """
    if requested is None:
        low, opt, high = DEFAULT_BATCH
        if model_max_batch is not None:
            high = min(high, model_max_batch)
            opt = min(opt, high)
            low = min(low, opt)
        return BatchProfile(low, opt, high)
    profile = parse_batch_profile(requested) if isinstance(requested, str) else requested
    if model_max_batch is not None and profile.max > model_max_batch:
        raise BatchProfileError(
            f"batch profile {profile} exceeds the model's max batch {model_max_batch}; "
            f"lower MAX to {model_max_batch} or export again with a larger --max-batch"
        )
    return profile


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; non-numeric tails (``"10.3.0rc1"``) keep their leading digits."""
    numbers = []
    for part in version.split("."):
        digits = ""
        for char in part:
            if char not in "0123456789":  # not str.isdigit: it accepts "²", which int() refuses
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def compute_capability_tuple(capability: str | Sequence[int]) -> tuple[int, int]:
    """``"8.6"`` or ``[8, 6]`` -> ``(8, 6)``."""
    try:
        parts = capability.split(".") if isinstance(capability, str) else list(capability)
        major, minor = (int(part) for part in parts)
    except (TypeError, ValueError):  # a manifest's value may be any JSON
        raise ManifestError(
            f"compute capability {capability!r} is not MAJOR.MINOR; rebuild the engine"
        ) from None
    return major, minor


def engine_compatibility_problem(
    engine: Mapping[str, Any] | None,
    device: Mapping[str, Any],
    *,
    tensorrt_version: str,
    compute_capability: str,
) -> str | None:
    """Why an engine with this manifest cannot run here, or None if it can.

    TensorRT plans load only in the TensorRT release that built them
    (major.minor.patch), unless built version-compatible, which allows any later
    release of the same major version. They run only on GPUs of the compute
    capability they were built on, unless built hardware-compatible (Ampere-plus),
    which allows any GPU of compute capability 8.0 or higher.
    """
    if not engine:
        return "has no TensorRT section in its manifest"
    built_version = str(engine.get("tensorrt_version", ""))
    built, running = version_tuple(built_version), version_tuple(tensorrt_version)
    if not built:
        return f"records no readable TensorRT version ({built_version!r})"
    if engine.get("version_compat"):
        if running[:1] != built[:1] or running < built:
            return (
                f"was built version-compatible with TensorRT {built_version}, which runs on TensorRT "
                f"{built[0]}.x from {built_version} on; this machine has TensorRT {tensorrt_version}"
            )
    elif running[:3] != built[:3]:
        return f"was built with TensorRT {built_version}; this machine has TensorRT {tensorrt_version}"
    here = compute_capability_tuple(compute_capability)
    if engine.get("hardware_compat"):
        if here[0] < AMPERE_MAJOR:
            return (
                f"was built hardware-compatible (Ampere or newer, compute capability 8.0+); "
                f"this GPU has compute capability {compute_capability}"
            )
        return None
    built_capability = device.get("compute_capability")
    if built_capability is None:
        return "records no GPU compute capability"
    if compute_capability_tuple(built_capability) != here:
        gpu = device.get("gpu_name") or "another GPU"
        return (
            f"was built for {gpu} (compute capability {built_capability}); "
            f"this GPU has compute capability {compute_capability}"
        )
    return None


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of a batch, run as a batch of ``run_rows`` (padded up to the profile's MIN)."""

    start: int
    stop: int
    run_rows: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_chunks(total: int, min_batch: int, max_batch: int) -> list[Chunk]:
    """Split ``total`` rows into engine-sized pieces: at most ``max_batch`` each, padded to ``min_batch``."""
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch} and {max_batch}")
    chunks = []
    for start in range(0, total, max_batch):
        stop = min(start + max_batch, total)
        chunks.append(Chunk(start, stop, max(stop - start, min_batch)))
    return chunks


def join_outputs(parts: Sequence[np.ndarray], empty_shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Re-join per-chunk outputs along the batch axis (an empty batch gives an empty array)."""
    if not parts:
        return np.empty((0, *empty_shape), dtype=dtype)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=0)


@dataclass(frozen=True)
class ParserIssue:
    """One error the TensorRT ONNX parser reported."""

    node_index: int
    node_name: str
    op: str
    message: str

    def describe(self) -> str:
        where = f"node {self.node_name!r}" if self.node_name else f"node #{self.node_index}"
        return f"{where} ({self.op or 'unknown op'}): {self.message}"


def format_parser_errors(
    onnx_path: str | os.PathLike[str], issues: Sequence[ParserIssue], version: str
) -> str:
    """One line listing every parser error, with what to do about it."""
    listed = "; ".join(issue.describe() for issue in issues) or "no details given"
    count = f"{len(issues)} error{'s' if len(issues) != 1 else ''}"
    return (
        f"TensorRT {version} cannot parse {onnx_path} ({count}): {listed}; "
        "export the model again with sedeploy export, or use a TensorRT release that supports these ops"
    )


def infer_precision(model: onnx.ModelProto) -> str:
    """Precision of an ONNX graph: ``int8`` with Q/DQ nodes, ``fp16`` with float16 weights, else ``fp32``."""
    ops = {node.op_type for node in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def check_implicit_int8_supported(tensorrt_module: Any) -> None:
    """Fail with one line unless this TensorRT still has the legacy implicit-INT8 path (10.x, not 11)."""
    has_calibrator = hasattr(tensorrt_module, "IInt8EntropyCalibrator2")
    has_flag = hasattr(getattr(tensorrt_module, "BuilderFlag", None), "INT8")
    if not (has_calibrator and has_flag):
        version = getattr(tensorrt_module, "__version__", "this release")
        raise BadInputError(
            f"--implicit-int8 needs TensorRT 10.x (calibrator and INT8 builder flag); TensorRT {version} "
            "builds only strongly typed networks: build the Q/DQ INT8 ONNX from the precision stage "
            "(sedeploy build-engine --int8) instead"
        )


# TensorRT plumbing.


def _require_tensorrt() -> None:
    import_optional("tensorrt", EXTRA)


_logger_lock = threading.Lock()
_trt_logger_instance: Any = None


def _trt_logger() -> trt.ILogger:
    """One TensorRT logger per process that forwards to :mod:`logging` (TensorRT wants a single logger)."""
    global _trt_logger_instance
    import tensorrt as trt

    class _ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.levels = {
                trt.ILogger.INTERNAL_ERROR: logging.CRITICAL,
                trt.ILogger.ERROR: logging.ERROR,
                trt.ILogger.WARNING: logging.WARNING,
                trt.ILogger.INFO: logging.INFO,
                trt.ILogger.VERBOSE: logging.DEBUG,
            }

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            logger.log(self.levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    with _logger_lock:
        if _trt_logger_instance is None:
            _trt_logger_instance = _ForwardingLogger()
        instance: trt.ILogger = _trt_logger_instance
        return instance


def _progress_monitor(callback: ProgressCallback) -> trt.IProgressMonitor:
    """A TensorRT progress monitor that reports each step to ``callback``."""
    import tensorrt as trt

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: SupportsInt) -> None:
            self.steps[phase_name] = int(num_steps)
            callback(phase_name, 0, int(num_steps))

        def step_complete(self, phase_name: str, step: SupportsInt) -> bool:
            callback(phase_name, int(step) + 1, self.steps.get(phase_name, 0))
            return True

        def phase_finish(self, phase_name: str) -> None:
            total = self.steps.pop(phase_name, 0)
            callback(phase_name, total, total)

    return _Monitor()


def _entropy_calibrator(
    batches: Iterable[np.ndarray], input_name: str, cache_path: Path | None
) -> tuple[Any, int, tuple[int, ...]]:
    """A legacy IInt8EntropyCalibrator2 over ``batches`` (TensorRT 10.x); returns it, its batch size and shape.

    Every batch must have the first batch's shape; a shorter last batch is dropped.
    Call only with a CUDA context pushed: the calibrator owns a pinned and a device buffer.
    """
    import tensorrt as trt

    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise BadInputError("the calibration set is empty; give at least one batch of images")
    first = np.ascontiguousarray(first, dtype=np.float32)
    shape = tuple(int(dim) for dim in first.shape)

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined, unused-ignore]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # type: ignore[attr-defined, unused-ignore]
            self.pending: np.ndarray | None = first
            self.host = cuda_memory.HostBuffer(shape, np.float32)
            self.device = cuda_memory.DeviceBuffer(self.host.nbytes)
            self.stream = cuda_memory.Stream()
            self.used = 0

        def get_batch_size(self) -> int:
            return shape[0]

        def get_batch(self, names: Sequence[str]) -> list[int] | None:  # type: ignore[override, unused-ignore]
            batch = self.pending if self.pending is not None else next(iterator, None)
            self.pending = None
            if batch is None:
                return None
            batch = np.asarray(batch, dtype=np.float32)
            if batch.shape != shape:
                logger.info("calibration batch of shape %s dropped (expected %s)", batch.shape, shape)
                return None
            self.host.array[...] = batch
            cuda_memory.copy_to_device_async(self.device, self.host.array, self.stream)
            self.stream.synchronize()
            self.used += 1
            return [self.device.ptr if name == input_name else 0 for name in names]

        def read_calibration_cache(self) -> bytes | None:  # type: ignore[override, unused-ignore]
            if cache_path is not None and cache_path.is_file():
                logger.info("reusing calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Buffer) -> None:
            if cache_path is not None:
                with atomic_output(cache_path) as temp_path:
                    temp_path.write_bytes(bytes(memoryview(cache)))

        def free(self) -> None:
            self.host.free()
            self.device.free()
            self.stream.free()

    return _Calibrator(), shape[0], shape


def _parser_issues(parser: trt.OnnxParser) -> list[ParserIssue]:
    issues = []
    for index in range(parser.num_errors):
        error: trt.ParserError = parser.get_error(index)
        issues.append(ParserIssue(error.node(), error.node_name(), error.node_operator(), error.desc()))
    return issues


def _network_flags(strongly_typed: bool) -> int:
    """Network creation flags: strongly typed where the release has the flag (on 11.x it is the only mode)."""
    import tensorrt as trt

    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _load_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> None:
    """Attach the timing cache stored at ``path`` (or a fresh one) to ``config``."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        logger.warning("timing cache %s is from another TensorRT or GPU; starting a fresh one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif data:
        logger.info("reusing timing cache %s (%d bytes)", path, len(data))


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    serialized = config.get_timing_cache().serialize()
    with atomic_output(path) as temp_path:
        temp_path.write_bytes(bytes(memoryview(serialized)))


def _source_precision(onnx_path: Path) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """Precision, recipe and calibration of the ONNX file: from its manifest if it has one, else from the graph."""
    if manifest_path(onnx_path).is_file():
        source = read_manifest(onnx_path)
        return source.precision, dict(source.recipe), source.calibration
    model = onnx.load(str(onnx_path), load_external_data=False)
    return infer_precision(model), {}, None


@dataclass(frozen=True)
class EngineBuildResult:
    """What :func:`build_engine` wrote."""

    engine_path: Path
    manifest_path: Path
    manifest: BuildManifest
    timing_cache: Path | None
    build_seconds: float

    def to_text(self) -> str:
        engine = self.manifest.engine or {}
        return "\n".join(
            [
                f"built {self.manifest.precision} TensorRT {engine.get('tensorrt_version')} engine "
                f"{self.engine_path} in {self.build_seconds:.1f} s",
                f"  GPU {self.manifest.device.get('gpu_name')} "
                f"(compute capability {self.manifest.device.get('compute_capability')}), "
                f"batch {engine.get('profile')}, hardware-compatible {engine.get('hardware_compat')}, "
                f"version-compatible {engine.get('version_compat')}",
                f"  manifest {self.manifest_path}"
                + (f", timing cache {self.timing_cache}" if self.timing_cache else ""),
            ]
        )


def build_engine(
    onnx_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    profile: BatchProfile | str | None = None,
    workspace: int | None = None,
    opt_level: int | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    hardware_compat: bool = False,
    version_compat: bool = False,
    implicit_int8: Iterable[np.ndarray] | None = None,
    calibration_cache: str | os.PathLike[str] | None = None,
    device: int = 0,
    progress: ProgressCallback | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> EngineBuildResult:
    """Build a TensorRT engine from a sedeploy ONNX file and write it with its manifest, both atomically.

    ``profile``: the batch range (``"MIN:OPT:MAX"``; default 1:8:32 capped by the
    model's max batch). ``workspace``: workspace memory limit in bytes.
    ``opt_level``: builder optimization level 0-5. ``timing_cache``: a file read
    before and rewritten after the build, so later builds skip known timings.
    ``implicit_int8``: calibration batches (float32 NCHW numpy arrays) for the
    legacy implicit INT8 path, TensorRT 10.x only, with ``calibration_cache``.
    ``progress`` receives TensorRT's build progress where the release reports it.
    ``provenance`` overrides what the manifest says about the source when the
    caller made the precision ONNX itself (keys ``source_onnx_sha256``,
    ``source_metadata``, ``precision``, ``recipe``, ``calibration``,
    ``build_options``, as in :class:`~sedeploy.manifest.BuildManifest`).
    """
    _require_tensorrt()
    import tensorrt as trt

    started = time.perf_counter()
    onnx_path = Path(onnx_path)
    output_path = Path(output_path)
    metadata = read_metadata(onnx_path)
    batch = resolve_batch_profile(profile, metadata.max_batch)
    if opt_level is not None and opt_level not in OPT_LEVELS:
        raise BadInputError(f"optimization level must be 0 to 5, got {opt_level}")
    if workspace is not None and workspace <= 0:
        raise BadInputError(f"workspace must be a positive number of bytes, got {workspace}")
    provenance = dict(provenance or {})
    if "precision" in provenance:
        precision = str(provenance["precision"])
        recipe = dict(provenance.get("recipe") or {})
        calibration = provenance.get("calibration")
    else:
        precision, recipe, calibration = _source_precision(onnx_path)
    legacy_int8 = implicit_int8 is not None
    if legacy_int8:
        check_implicit_int8_supported(trt)
        if precision != "fp32":
            raise BadInputError(
                f"--implicit-int8 calibrates an FP32 ONNX file, but {onnx_path} is {precision}; "
                "give the FP32 export"
            )
    gpu = cuda_memory.device_info(device)
    if hardware_compat and compute_capability_tuple(gpu.compute_capability)[0] < AMPERE_MAJOR:
        raise BadInputError(
            f"--hardware-compat needs an Ampere or newer GPU to build on; {gpu.name} has compute "
            f"capability {gpu.compute_capability}"
        )

    cuda = cuda_memory.CudaContext(device)
    calibrator: Any = None
    try:
        with cuda:
            trt_logger = _trt_logger()
            builder = trt.Builder(trt_logger)
            network = builder.create_network(_network_flags(strongly_typed=not legacy_int8))
            parser = trt.OnnxParser(network, trt_logger)
            if not parser.parse_from_file(str(onnx_path)):
                raise EngineBuildError(
                    format_parser_errors(onnx_path, _parser_issues(parser), trt.__version__)
                )
            input_name = network.get_input(0).name if network.num_inputs else ""
            if network.num_inputs != 1 or input_name != metadata.input_name:
                raise EngineBuildError(
                    f"{onnx_path} should have the single input {metadata.input_name!r} its metadata names, "
                    f"but TensorRT sees {network.num_inputs} input(s) starting with {input_name!r}; export it again"
                )
            image_shape = tuple(metadata.input_size)

            config = builder.create_builder_config()
            optimization_profile = builder.create_optimization_profile()
            optimization_profile.set_shape(
                input_name, (batch.min, *image_shape), (batch.opt, *image_shape), (batch.max, *image_shape)
            )
            config.add_optimization_profile(optimization_profile)
            if workspace is not None:
                config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
            if opt_level is not None:
                config.builder_optimization_level = opt_level
            if hardware_compat:
                config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
            if version_compat:
                config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
            cache_path = Path(timing_cache) if timing_cache is not None else None
            _load_timing_cache(config, cache_path)
            if progress is not None:
                if hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):
                    config.progress_monitor = _progress_monitor(progress)
                else:
                    logger.info("this TensorRT reports no build progress")

            if implicit_int8 is not None:
                calibration_path = Path(calibration_cache) if calibration_cache is not None else None
                calibrator, calibration_batch, calibration_shape = _entropy_calibrator(
                    implicit_int8, input_name, calibration_path
                )
                if calibration_shape[1:] != image_shape:
                    raise BadInputError(
                        f"calibration batches have images of shape {calibration_shape[1:]}, "
                        f"the model takes {image_shape}"
                    )
                if hasattr(trt.BuilderFlag, "INT8") and hasattr(trt.BuilderFlag, "FP16"):
                    config.set_flag(trt.BuilderFlag.INT8)
                    config.set_flag(trt.BuilderFlag.FP16)
                if hasattr(config, "int8_calibrator"):
                    config.int8_calibrator = calibrator
                if hasattr(config, "set_calibration_profile"):
                    calibration_profile = builder.create_optimization_profile()
                    calibration_profile.set_shape(
                        input_name, calibration_shape, calibration_shape, calibration_shape
                    )
                    config.set_calibration_profile(calibration_profile)
                precision = "int8"
                recipe = {"flavour": "tensorrt_implicit", "fallback": "fp16"}
                calibration = {
                    "method": "entropy2",
                    "batch_size": calibration_batch,
                    "cache": str(calibration_path) if calibration_path else None,
                }

            logger.info("building TensorRT %s engine from %s, batch %s", trt.__version__, onnx_path, batch)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise EngineBuildError(
                    f"TensorRT {trt.__version__} could not build an engine from {onnx_path} "
                    "(its errors are in the log above); fix them or try a smaller --batch or larger --workspace"
                )
            engine_bytes = bytes(memoryview(serialized))  # written with its manifest below, as one unit
            if cache_path is not None:
                _save_timing_cache(config, cache_path)
    finally:
        if calibrator is not None:
            with cuda:
                calibrator.free()
        cuda.free()

    seconds = time.perf_counter() - started
    manifest = BuildManifest(
        artifact=output_path.name,
        artifact_sha256=hashlib.sha256(engine_bytes).hexdigest(),
        artifact_format="tensorrt_plan",
        backend="tensorrt",
        backend_version=trt.__version__,
        precision=precision,
        source_onnx_sha256=provenance.get("source_onnx_sha256") or sha256_of_file(onnx_path),
        source_metadata=provenance.get("source_metadata") or metadata.to_dict(),
        device={
            "description": f"{gpu.name}, compute capability {gpu.compute_capability}",
            "gpu_name": gpu.name,
            "compute_capability": gpu.compute_capability,
        },
        recipe=recipe,
        calibration=calibration,
        engine={
            "tensorrt_version": trt.__version__,
            "profile": batch.to_dict(),
            "hardware_compat": hardware_compat,
            "version_compat": version_compat,
        },
        build_options={
            **dict(provenance.get("build_options") or {}),
            "workspace": workspace,
            "opt_level": opt_level,
            "timing_cache": str(timing_cache) if timing_cache is not None else None,
            "implicit_int8": legacy_int8,
        },
        build_seconds=round(seconds, 3),
    )
    written = write_with_manifest(output_path, engine_bytes, manifest)
    logger.info("wrote %s and %s in %.1f s", output_path, written, seconds)
    return EngineBuildResult(
        output_path, written, manifest, Path(timing_cache) if timing_cache else None, seconds
    )


def build_engine_from_onnx(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    common: Mapping[str, Any] | None = None,
    started: float | None = None,
    progress: bool | ProgressCallback = False,
    **options: Any,
) -> BuildManifest:
    """:func:`build_engine` for ``sedeploy.build``: ``common`` is the provenance it already knows; returns the manifest.

    ``progress=True`` logs each finished build phase; a callable receives every step.
    ``options`` are :func:`build_engine`'s keyword options (``profile``, ``workspace``, ...).
    """
    callback: ProgressCallback | None
    if callable(progress):
        callback = progress
    elif progress:
        callback = _log_progress
    else:
        callback = None
    result = build_engine(onnx_path, engine_path, progress=callback, provenance=common, **options)
    if started is not None:
        logger.info("engine ready %.1f s after the build started", time.perf_counter() - started)
    return result.manifest


def _log_progress(phase: str, done: int, total: int) -> None:
    if total and done >= total:
        logger.info("TensorRT build: %s done (%d steps)", phase, total)


def require_available(device: int = 0) -> str:
    """Describe the TensorRT release and GPU this machine builds with; raise if either is missing."""
    _require_tensorrt()
    gpu = cuda_memory.device_info(device)
    import tensorrt as trt

    return f"TensorRT {trt.__version__} and {gpu.name} (compute capability {gpu.compute_capability})"


def availability(device: int = 0) -> tuple[bool, str]:
    """Whether this machine can build and run TensorRT engines, and why (never raises)."""
    try:
        return True, require_available(device)
    except SedeployError as error:
        return False, str(error)


# Runner.


@dataclass
class _ExecutionSlot:
    """One execution context with its own stream and buffers: what one caller uses at a time."""

    context: trt.IExecutionContext
    buffers: cuda_memory.BufferSet
    graphs: dict[int, cuda_memory.CudaGraph | None] = field(default_factory=dict)
    last_rows: int | None = None
    """Batch size of the context's last run: a graph is replayed only while the shape is unchanged."""

    def free(self) -> None:
        for graph in self.graphs.values():
            if graph is not None:
                graph.free()
        self.graphs.clear()
        self.buffers.free()
        del self.context


class TensorRTRunner(Runner):
    """Runs a TensorRT engine built by :func:`build_engine`: numpy in, numpy out, pinned memory in between.

    ``contexts`` execution contexts (each with its own stream and buffers) serve
    that many concurrent callers; more callers wait. ``cuda_graph=True`` captures
    one CUDA graph per batch size after its first run, and falls back to direct
    launches where capture fails. ``device`` is the CUDA device index. The manifest
    is required; ``verify_hash=False`` skips hashing the engine against it (the
    version and GPU checks still run).
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        device: int = 0,
        contexts: int = 2,
        cuda_graph: bool = False,
        verify_hash: bool = True,
    ) -> None:
        if contexts < 1:
            raise BadInputError(f"contexts must be at least 1, got {contexts}")
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise BadInputError(
                f"engine {self.engine_path} does not exist; build it with sedeploy build-engine"
            )
        # The manifest is checked before TensorRT is needed: a wrong file is named as such on any machine.
        # verify_hash=False: hashing a large engine costs a read of the file; hot paths may skip it.
        manifest = checked_manifest(self.engine_path, verify_hash=verify_hash, required=True)
        assert manifest is not None  # required=True raises instead of returning None
        self.manifest = manifest
        _require_tensorrt()
        import tensorrt as trt

        self.cuda_graph = cuda_graph
        self._pool: queue.Queue[_ExecutionSlot] = queue.Queue()
        self._pool_lock = threading.Lock()
        self._slots_out = 0
        self._slots: list[_ExecutionSlot] = []
        self._finished = False

        gpu = cuda_memory.device_info(device)
        problem = engine_compatibility_problem(
            self.manifest.engine,
            self.manifest.device,
            tensorrt_version=trt.__version__,
            compute_capability=gpu.compute_capability,
        )
        if problem is not None:
            raise EngineMismatchError(
                f"engine {self.engine_path} {problem}; rebuild it on this machine with "
                f"sedeploy build-engine MODEL.onnx --backend tensorrt"
            )
        self.provider = f"TensorRT {trt.__version__} on {gpu.name}"
        self.gpu_name = gpu.name
        """The CUDA device's name: bench looks its published peak up by it."""
        self.metadata = (
            ModelMetadata.from_dict(self.manifest.source_metadata, str(manifest_path(self.engine_path)))
            if self.manifest.source_metadata
            else None
        )

        self._cuda = cuda_memory.CudaContext(device)
        try:
            with self._cuda:
                self._load(contexts)
        except BaseException:
            self._free_all()
            raise

    def _load(self, contexts: int) -> None:
        import tensorrt as trt

        runtime = trt.Runtime(_trt_logger())
        engine_info = self.manifest.engine or {}
        if engine_info.get("version_compat"):
            runtime.engine_host_code_allowed = True
        self._runtime = runtime
        engine = _deserialize(runtime, self.engine_path)
        self._engine = engine
        inputs, outputs = _io_names(engine)
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(
                f"engine {self.engine_path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "sedeploy runs image classifiers with one of each"
            )
        self._input_name, self._output_name = inputs[0], outputs[0]
        min_shape, _, max_input_shape = (
            _dims(dims) for dims in engine.get_tensor_profile_shape(self._input_name, 0)
        )
        self._min_batch, self._max_batch = min_shape[0], max_input_shape[0]
        input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._input_name))).name
        output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._output_name))).name

        first_context = _create_context(engine)
        if not first_context.set_input_shape(self._input_name, max_input_shape):
            raise EngineRunError(f"engine {self.engine_path} rejects its own largest input {max_input_shape}")
        max_output_shape = _dims(first_context.get_tensor_shape(self._output_name))
        self.input_spec = TensorSpec(
            self._input_name, input_dtype, (None, *max_input_shape[1:]), max_batch=self._max_batch
        )
        self._output_row_shape = max_output_shape[1:]
        self.output_spec = TensorSpec(
            self._output_name, output_dtype, (None, *max_output_shape[1:]), max_batch=self._max_batch
        )
        layouts = [
            cuda_memory.TensorLayout(self._input_name, input_dtype, max_input_shape, is_input=True),
            cuda_memory.TensorLayout(self._output_name, output_dtype, max_output_shape, is_input=False),
        ]
        for index in range(contexts):
            context = first_context if index == 0 else _create_context(engine)
            slot = _ExecutionSlot(context, cuda_memory.BufferSet(layouts))
            self._slots.append(slot)
            self._pool.put(slot)

    def __enter__(self) -> TensorRTRunner:
        return self

    @property
    def max_batch(self) -> int:
        """Largest batch one engine call takes; bigger inputs are split."""
        return self._max_batch

    # One batch.

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        slot = self._acquire()
        try:
            with self._cuda:
                parts = []
                for chunk in plan_chunks(len(batch), self._min_batch, self._max_batch):
                    self._submit(slot, batch[chunk.start : chunk.stop], chunk.run_rows)
                    parts.append(self._collect(slot, chunk.rows))
                    self._maybe_capture(slot, chunk.run_rows)
        finally:
            self._give_back(slot)
        return join_outputs(parts, self._output_row_shape, self.output_spec.dtype)

    def _submit(self, slot: _ExecutionSlot, rows: np.ndarray, run_rows: int) -> None:
        """Queue copy-in, inference and copy-out of ``rows`` (padded to ``run_rows``) on the slot's stream."""
        buffers = slot.buffers
        pinned = buffers.host[self._input_name].rows(run_rows)
        pinned[: len(rows)] = rows
        if run_rows > len(rows):
            pinned[len(rows) :] = 0
        buffers.upload(self._input_name, run_rows)
        self._prepare(slot, run_rows)
        self._launch(slot, run_rows)
        buffers.download(self._output_name, run_rows)

    def _prepare(self, slot: _ExecutionSlot, run_rows: int) -> None:
        """Set the context's input shape and tensor addresses for a run of ``run_rows`` (host side only)."""
        context = slot.context
        if not context.set_input_shape(self._input_name, (run_rows, *self.input_spec.shape[1:])):
            raise EngineRunError(f"the engine rejects a batch of {run_rows}")
        for name, address in slot.buffers.addresses().items():
            context.set_tensor_address(name, address)

    def _launch(self, slot: _ExecutionSlot, run_rows: int) -> None:
        """Queue the engine alone on the slot's stream: its captured graph when there is one, else a direct run."""
        stream = slot.buffers.stream
        graph = slot.graphs.get(run_rows) if slot.last_rows == run_rows else None
        if graph is not None:
            graph.launch(stream)
        elif not slot.context.execute_async_v3(stream.handle):
            raise EngineRunError(f"TensorRT failed to run a batch of {run_rows}; see the log")
        slot.last_rows = run_rows

    def time_compute(self, batch: int, iterations: int, warmup: int = 2) -> list[float]:
        """Seconds of GPU time per call of the engine alone at ``batch`` rows, from CUDA events.

        Events are recorded on the runner's own stream just before and after the
        engine launch (the chunks a call of ``batch`` rows runs); the input stays on
        the GPU and nothing is copied back, so a call's end-to-end time minus this
        is the host<->device copies and the host-side overhead.
        """
        if batch < 1 or iterations < 1 or warmup < 0:
            raise BadInputError(
                f"time_compute needs batch >= 1, iterations >= 1, warmup >= 0 (got {batch}, {iterations}, {warmup})"
            )
        chunks = plan_chunks(batch, self._min_batch, self._max_batch)
        slot = self._acquire()
        try:
            with self._cuda:
                buffers = slot.buffers
                largest = max(chunk.run_rows for chunk in chunks)
                buffers.host[self._input_name].rows(largest)[:] = 0
                buffers.upload(self._input_name, largest)  # once, outside the timed span
                start, end = cuda_memory.Event(), cuda_memory.Event()
                try:
                    seconds = []
                    for index in range(warmup + iterations):
                        total_ms = 0.0
                        for chunk in chunks:
                            self._prepare(slot, chunk.run_rows)
                            start.record(buffers.stream)
                            self._launch(slot, chunk.run_rows)
                            end.record(buffers.stream)
                            end.synchronize()
                            total_ms += end.milliseconds_since(start)
                            self._maybe_capture(slot, chunk.run_rows)
                        if index >= warmup:
                            seconds.append(total_ms / 1e3)
                finally:
                    start.free()
                    end.free()
        finally:
            self._give_back(slot)
        return seconds

    def _collect(self, slot: _ExecutionSlot, rows: int) -> np.ndarray:
        """Wait for the slot's stream and copy the first ``rows`` outputs out of pinned memory."""
        slot.buffers.stream.synchronize()
        return slot.buffers.host[self._output_name].rows(rows).copy()

    def _maybe_capture(self, slot: _ExecutionSlot, run_rows: int) -> None:
        """After a batch size's first direct run (TensorRT's required warm-up), capture a graph for it.

        After a change of batch size the context runs directly once before its
        graph for the new size is replayed, so TensorRT's shape-dependent state is
        always set up by a real enqueue of that shape.
        """
        if not self.cuda_graph or run_rows in slot.graphs:
            return
        stream = slot.buffers.stream
        context = slot.context

        def enqueue() -> None:
            if not context.execute_async_v3(stream.handle):
                raise EngineRunError("execute_async_v3 failed during graph capture")

        slot.graphs[run_rows] = cuda_memory.CudaGraph.capture(stream, enqueue)

    # Many batches.

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Run many batches, yielding each one's outputs in order.

        Two execution slots (two streams, two buffer sets) alternate, so the copies
        of one piece overlap the compute of the previous one. Batches bigger than
        :attr:`max_batch` are split and re-joined as in a single call.
        """
        slots = [self._acquire()]
        try:
            second = self._acquire(wait=False)
            if second is not None:
                slots.append(second)
            yield from self._stream_with(slots, batches)
        finally:
            for slot in slots:
                self._give_back(slot)

    def _stream_with(
        self, slots: Sequence[_ExecutionSlot], batches: Iterable[np.ndarray]
    ) -> Iterator[np.ndarray]:
        def pieces() -> Iterator[tuple[int, np.ndarray, Chunk | None]]:
            for index, batch in enumerate(batches):
                if self._closed:
                    raise EngineRunError("the runner was closed while streaming")
                batch = np.ascontiguousarray(np.asarray(batch))
                self.input_spec.check(batch)
                chunks = plan_chunks(len(batch), self._min_batch, self._max_batch)
                if not chunks:
                    yield index, batch, None
                for chunk in chunks:
                    yield index, batch, chunk

        def submit(
            slot: _ExecutionSlot, piece: tuple[int, np.ndarray, Chunk | None]
        ) -> tuple[int, Chunk | None]:
            index, batch, chunk = piece
            if chunk is not None:
                with self._cuda:
                    self._submit(slot, batch[chunk.start : chunk.stop], chunk.run_rows)
            return index, chunk

        def collect(slot: _ExecutionSlot, pending: tuple[int, Chunk | None]) -> tuple[int, np.ndarray | None]:
            index, chunk = pending
            if chunk is None:
                return index, None
            with self._cuda:
                output = self._collect(slot, chunk.rows)
                self._maybe_capture(slot, chunk.run_rows)
            return index, output

        current: int | None = None
        parts: list[np.ndarray] = []
        for index, output in cuda_memory.pipeline(pieces(), slots, submit, collect):
            if current is not None and index != current:
                yield join_outputs(parts, self._output_row_shape, self.output_spec.dtype)
                parts = []
            current = index
            if output is not None:
                parts.append(output)
        if current is not None:
            yield join_outputs(parts, self._output_row_shape, self.output_spec.dtype)

    # Pool and lifetime.

    @typing.overload
    def _acquire(self) -> _ExecutionSlot: ...

    @typing.overload
    def _acquire(self, wait: bool) -> _ExecutionSlot | None: ...

    def _acquire(self, wait: bool = True) -> _ExecutionSlot | None:
        """Take an execution slot from the pool, waiting for one unless ``wait`` is off (then None if none is free).

        A second slot for streaming is never waited for, so two streaming callers
        cannot each hold one slot while waiting for the other's.
        """
        with self._pool_lock:
            if self._closed:
                raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
            if not wait and self._pool.empty():
                return None
            self._slots_out += 1
        return self._pool.get()

    def _give_back(self, slot: _ExecutionSlot) -> None:
        with self._pool_lock:
            self._slots_out -= 1
            closed_and_idle = self._closed and self._slots_out == 0
            self._pool.put(slot)
        if closed_and_idle:
            self._free_all()

    def _release(self) -> None:
        with self._pool_lock:
            idle = self._slots_out == 0
        if idle:
            self._free_all()

    def _free_all(self) -> None:
        """Free slots, engine, runtime and the CUDA context retention, once, after the last caller."""
        with self._pool_lock:
            if self._finished:
                return
            self._finished = True
        if not hasattr(self, "_cuda"):
            return
        with self._cuda:
            for slot in self._slots:
                slot.free()
            self._slots.clear()
            for name in ("_engine", "_runtime"):
                if hasattr(self, name):
                    delattr(self, name)
        self._cuda.free()


def _deserialize(runtime: trt.Runtime, path: Path) -> trt.ICudaEngine:
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EngineMismatchError(
            f"TensorRT cannot load engine {path} (see the log above); rebuild it on this machine with "
            "sedeploy build-engine MODEL.onnx --backend tensorrt"
        )
    return engine


def _create_context(engine: trt.ICudaEngine) -> trt.IExecutionContext:
    context = engine.create_execution_context()
    if context is None:
        raise EngineRunError("TensorRT could not create an execution context (out of GPU memory?)")
    return context


def _io_names(engine: trt.ICudaEngine) -> tuple[list[str], list[str]]:
    """Names of the engine's input and output tensors."""
    import tensorrt as trt

    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(name)
        else:
            outputs.append(name)
    return inputs, outputs


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[index]) for index in range(len(dims)))
