"""TensorRT engine builder: a precision ONNX file -> a strongly typed network -> a plan with its manifest.

The ONNX file's own types decide the precision (FP32, FP16-typed or Q/DQ INT8); one optimization profile covers
the dynamic batch; a timing cache file is reused across builds and merged after each (under a folder lock, as
Polygraphy does). Jetson builds may target a DLA core (with GPU fallback; the report lists which layers run
where) and 2:4-sparse kernels. 10.x and 11.x differ: found with ``hasattr``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsInt

import numpy as np

from sedeploy.artifacts.manifest import (
    BuildManifest,
    checked_manifest,
    write_with_manifest,
)
from sedeploy.artifacts.metadata import load_onnx, read_metadata
from sedeploy.artifacts.precision import graph_precision
from sedeploy.backends import cuda_memory
from sedeploy.backends.tensorrt.compat import (
    AMPERE_MAJOR,
    OPT_LEVELS,
    BatchProfile,
    EngineBuildError,
    ProgressCallback,
    check_dla_options,
    check_implicit_int8_supported,
    compute_capability_tuple,
    make_trt_logger,
    require_tensorrt,
    resolve_batch_profile,
)
from sedeploy.errors import BadInputError
from sedeploy.files import atomic_output, folder_lock, sha256_of_file

if TYPE_CHECKING:
    import tensorrt as trt
    from typing_extensions import Buffer

logger = logging.getLogger(__name__)


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
            self.error: BaseException | None = None
            """An exception raised while fetching a batch: TensorRT would swallow it and end calibration early."""

        def get_batch_size(self) -> int:
            return shape[0]

        def get_batch(self, names: Sequence[str]) -> list[int] | None:  # type: ignore[override, unused-ignore]
            try:
                return self._next_batch(names)
            except BaseException as error:  # kept and re-raised after the build: TensorRT drops it
                self.error = error
                return None

        def _next_batch(self, names: Sequence[str]) -> list[int] | None:
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


def save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Merge this build's timing cache into the file at ``path`` and write it back atomically.

    Another build may have written the file since this one read it (two builds
    sharing one cache), so the file is read again under a lock on its folder and
    combined with this build's cache, as Polygraphy does, instead of overwritten.
    A file TensorRT cannot combine (another release or GPU) is replaced, with a warning.
    """
    cache = config.get_timing_cache()
    if cache is None:
        logger.warning("TensorRT returned no timing cache; %s is left as it was", path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(path.parent):
        if path.is_file():
            previous = config.create_timing_cache(path.read_bytes())
            if previous is None or not cache.combine(previous, True):
                logger.warning(
                    "timing cache %s cannot be merged (another TensorRT or GPU?); replacing it", path
                )
            else:
                logger.info("merged this build's timings into %s", path)
        serialized = cache.serialize()
        with atomic_output(path) as temp_path:
            temp_path.write_bytes(bytes(memoryview(serialized)))


@dataclass(frozen=True)
class LayerPlacement:
    """Where one network layer can run in a DLA build: on the DLA, or falling back to the GPU."""

    name: str
    kind: str
    on_dla: bool


def dla_placement(network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> list[LayerPlacement]:
    """``config.can_run_on_DLA`` for every layer (call with the DLA device type and core already set)."""
    placements = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        placements.append(
            LayerPlacement(layer.name, str(layer.type).split(".")[-1], bool(config.can_run_on_DLA(layer)))
        )
    return placements


def describe_placement(placements: Sequence[LayerPlacement]) -> str:
    """One line: how many layers run on the DLA, and which kinds fall back to the GPU."""
    fallback = [placement for placement in placements if not placement.on_dla]
    kinds = sorted({placement.kind for placement in fallback})
    return (
        f"{len(placements) - len(fallback)} of {len(placements)} layers on the DLA, {len(fallback)} on the GPU"
        + (f" ({', '.join(kinds)})" if kinds else "")
    )


def _source_precision(onnx_path: Path) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """Precision, recipe and calibration of the ONNX file: from its manifest if it has one, else from the graph.

    The manifest is read through :func:`~sedeploy.artifacts.manifest.checked_manifest`: one that does not
    describe this file (its sha256 differs) is refused, never trusted for the precision.
    """
    source = checked_manifest(onnx_path)
    if source is not None:
        return source.precision, dict(source.recipe), source.calibration
    model = load_onnx(onnx_path)
    return graph_precision(model), {}, None


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
                *(
                    [f"  DLA core {engine.get('dla_core')}: {engine.get('dla_placement')}"]
                    if engine.get("dla_core") is not None
                    else []
                ),
                *(["  2:4 sparse weights allowed"] if engine.get("sparsity") else []),
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
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    sparsity: bool = False,
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
    before and merged after the build, so later builds skip known timings.
    ``dla_core``: build for that DLA core of a Jetson (FP16 or INT8 only), refused
    where the platform has none; ``gpu_fallback`` lets layers the DLA cannot run
    fall back to the GPU (without it such a layer fails the build); the manifest
    records every layer's placement. ``sparsity``: allow 2:4-sparse kernels (Ampere+).
    ``implicit_int8``: calibration batches (float32 NCHW numpy arrays) for the
    legacy implicit INT8 path, TensorRT 10.x only, with ``calibration_cache``.
    ``progress`` receives TensorRT's build progress where the release reports it.
    ``provenance`` overrides what the manifest says about the source when the
    caller made the precision ONNX itself (keys ``source_onnx_sha256``,
    ``source_metadata``, ``precision``, ``recipe``, ``calibration``,
    ``build_options``, as in :class:`~sedeploy.artifacts.manifest.BuildManifest`).
    """
    require_tensorrt()
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
                f"implicit_int8 calibrates an FP32 ONNX file, but {onnx_path} is {precision}; "
                "give the FP32 export"
            )
    check_dla_options(dla_core, gpu_fallback, hardware_compat)
    if dla_core is not None and precision == "fp32" and not legacy_int8:
        raise BadInputError(
            "a DLA runs FP16 and INT8 layers only; build the DLA engine at precision fp16 or int8"
        )
    gpu = cuda_memory.device_info(device)
    if sparsity and compute_capability_tuple(gpu.compute_capability)[0] < AMPERE_MAJOR:
        raise BadInputError(
            f"sparsity=True needs 2:4 sparse tensor cores (Ampere or newer); {gpu.name} has compute "
            f"capability {gpu.compute_capability}"
        )
    if hardware_compat and compute_capability_tuple(gpu.compute_capability)[0] < AMPERE_MAJOR:
        raise BadInputError(
            f"hardware_compat needs an Ampere or newer GPU to build on; {gpu.name} has compute "
            f"capability {gpu.compute_capability}"
        )

    cuda = cuda_memory.CudaContext(device)
    calibrator: Any = None
    placements: list[LayerPlacement] = []
    try:
        with cuda:
            try:
                trt_logger = make_trt_logger()
                builder = trt.Builder(trt_logger)
                # Builder, network, parser and config are dropped inside this block (see the end of it),
                # so none outlives the context it was made in.
                network = builder.create_network(_network_flags(strongly_typed=not legacy_int8))
                parser = trt.OnnxParser(network, trt_logger)
                if dla_core is not None and hasattr(trt.OnnxParserFlag, "ADJUST_FOR_DLA"):
                    parser.set_flag(trt.OnnxParserFlag.ADJUST_FOR_DLA)  # 10.16+/11.x: DLA-friendlier layers
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
                # Per-layer precisions in the engine inspector's JSON: what the precision audit reads.
                config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
                optimization_profile = builder.create_optimization_profile()
                optimization_profile.set_shape(
                    input_name,
                    (batch.min, *image_shape),
                    (batch.opt, *image_shape),
                    (batch.max, *image_shape),
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
                _share_profile(config)
                if sparsity:
                    config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
                if dla_core is not None:
                    placements = _configure_dla(builder, network, config, dla_core, gpu_fallback, gpu.name)
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

                logger.info(
                    "building TensorRT %s engine from %s, batch %s", trt.__version__, onnx_path, batch
                )
                serialized = builder.build_serialized_network(network, config)
                if serialized is None:
                    raise EngineBuildError(
                        f"TensorRT {trt.__version__} could not build an engine from {onnx_path} "
                        "(its errors are in the log above); fix them, or try a smaller profile MAX or a larger "
                        "workspace",
                        params=("profile", "workspace"),
                    )
                engine_bytes = bytes(memoryview(serialized))  # written with its manifest below, as one unit
                if cache_path is not None:
                    save_timing_cache(config, cache_path)
                if calibrator is not None and calibrator.error is not None:
                    raise BadInputError(
                        f"calibration stopped early: reading a calibration batch failed ({calibrator.error})"
                    ) from calibrator.error
            except BaseException:
                # The traceback would keep TensorRT's objects alive past the context: drop them here, newest first.
                with contextlib.suppress(NameError):
                    del serialized
                with contextlib.suppress(NameError):
                    del optimization_profile
                with contextlib.suppress(NameError):
                    del parser
                with contextlib.suppress(NameError):
                    del network
                with contextlib.suppress(NameError):
                    del config
                with contextlib.suppress(NameError):
                    del builder
                raise
            del serialized, optimization_profile, parser, network, config, builder
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
            "dla_core": dla_core,
            "gpu_fallback": gpu_fallback,
            "sparsity": sparsity,
            **(
                {
                    "dla_placement": describe_placement(placements),
                    "dla_layers": [placement.name for placement in placements if placement.on_dla],
                    "gpu_fallback_layers": [
                        placement.name for placement in placements if not placement.on_dla
                    ],
                }
                if dla_core is not None
                else {}
            ),
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


def _share_profile(config: trt.IBuilderConfig) -> None:
    """Let several execution contexts use the one optimization profile at once (the runner's context pool).

    TensorRT's header says each context in concurrent use needs its own profile
    unless profile sharing is on; 10.x has it as a preview feature (on by default
    since 10.0, set here explicitly), 11.x always shares.
    """
    import tensorrt as trt

    preview = getattr(trt, "PreviewFeature", None)
    if preview is not None and hasattr(preview, "PROFILE_SHARING_0806"):
        config.set_preview_feature(preview.PROFILE_SHARING_0806, True)


def _configure_dla(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    config: trt.IBuilderConfig,
    core: int,
    gpu_fallback: bool,
    gpu_name: str,
) -> list[LayerPlacement]:
    """Point the build at DLA ``core`` and report each layer's placement; refuse what cannot be built.

    On an SE-ResNet the SE block's squeeze (global pooling) and its broadcast scale
    (the gate's ``Mul``) are the layers a DLA is most likely to refuse: with
    ``gpu_fallback`` they run on the GPU, at the cost of a DLA<->GPU hand-over per block.
    """
    import tensorrt as trt

    available = int(builder.num_DLA_cores)
    if available == 0:
        raise BadInputError(
            f"dla_core {core}: {gpu_name} has no deep-learning accelerator (DLAs are on Jetson AGX/NX "
            "Xavier and Orin); build without dla_core"
        )
    if core >= available:
        raise BadInputError(f"dla_core {core}: this device has DLA cores 0..{available - 1}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    if gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    placements = dla_placement(network, config)
    fallback = [placement for placement in placements if not placement.on_dla]
    logger.info("DLA core %d: %s", core, describe_placement(placements))
    if fallback and not gpu_fallback:
        names = ", ".join(f"{placement.name} ({placement.kind})" for placement in fallback[:5])
        raise BadInputError(
            f"{len(fallback)} layer(s) cannot run on DLA core {core} (e.g. {names}); pass gpu_fallback=True to "
            "run them on the GPU"
        )
    return placements


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
