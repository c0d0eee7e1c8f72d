"""TensorRT compatibility rules: batch profiles, version and GPU checks, feature detection, availability.

Pure logic, importable without TensorRT: what a build or a runner decides before TensorRT sees a file.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sedeploy.artifacts.manifest import (
    ManifestError,
)
from sedeploy.backends import cuda_memory
from sedeploy.errors import BadInputError, ConfigError, SedeployError
from sedeploy.optional import import_optional

if TYPE_CHECKING:
    import tensorrt as trt

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


@dataclass(frozen=True)
class TensorRTOptions:
    """TensorRT builder options, typed: recorded in the manifest as :meth:`to_dict` and compared as a structure.

    ``profile``: the batch range ``MIN:OPT:MAX`` (default 1:8:32 capped by the model's max batch).
    ``workspace``: workspace memory limit in bytes. ``opt_level``: builder optimization level 0-5.
    ``timing_cache``: a file read before and merged after the build. ``hardware_compat``: an engine for every
    Ampere-and-newer GPU; ``version_compat``: one that later TensorRT releases run. ``dla_core``: build for
    that deep-learning accelerator of a Jetson (trtexec's ``--useDLACore``), with ``gpu_fallback`` letting
    layers the DLA cannot run fall back to the GPU (``--allowGPUFallback``). ``sparsity``: let TensorRT use
    2:4-structured-sparse kernels where the weights are 2:4 sparse (Ampere and newer).
    """

    profile: str | None = None
    workspace: int | None = None
    opt_level: int | None = None
    timing_cache: str | None = None
    hardware_compat: bool = False
    version_compat: bool = False
    dla_core: int | None = None
    gpu_fallback: bool = False
    sparsity: bool = False

    def __post_init__(self) -> None:
        if self.profile is not None:
            parse_batch_profile(self.profile)
        if self.opt_level is not None and self.opt_level not in OPT_LEVELS:
            raise ConfigError(f"opt_level must be 0 to 5, got {self.opt_level}")
        if self.workspace is not None and self.workspace <= 0:
            raise ConfigError(f"workspace must be a positive number of bytes, got {self.workspace}")
        check_dla_options(self.dla_core, self.gpu_fallback, self.hardware_compat)

    def given(self) -> tuple[str, ...]:
        """Names of the options set away from their defaults (what a non-TensorRT build cannot honour)."""
        defaults = TensorRTOptions()
        return tuple(
            field.name
            for field in dataclasses.fields(self)
            if getattr(self, field.name) != getattr(defaults, field.name)
        )

    def builder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`sedeploy.backends.tensorrt.build_engine`."""
        return {name: getattr(self, name) for name in self.given()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TensorRTOptions:
        """The options a manifest recorded; unknown keys are refused (a newer sedeploy wrote them)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown TensorRT options {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**values)


class EngineBuildError(SedeployError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class BatchProfileError(BadInputError):
    """A batch profile (``profile``, ``MIN:OPT:MAX``) is malformed or outside what the model allows."""

    exit_code = 2


class EngineMismatchError(ManifestError):
    """An engine was built for another TensorRT version or GPU than this machine's."""


class EngineRunError(SedeployError):
    """TensorRT failed while running an engine."""


# Pure logic, testable without TensorRT or a GPU.


def check_dla_options(dla_core: int | None, gpu_fallback: bool, hardware_compat: bool) -> None:
    """Refuse DLA options that contradict each other (one line, exit 2)."""
    if dla_core is not None and (isinstance(dla_core, bool) or not isinstance(dla_core, int) or dla_core < 0):
        raise ConfigError(f"dla_core must be a DLA core index 0, 1, ..., got {dla_core!r}")
    if gpu_fallback and dla_core is None:
        raise ConfigError("gpu_fallback applies to a DLA build; give dla_core as well")
    if dla_core is not None and hardware_compat:
        raise ConfigError("a DLA engine cannot be hardware-compatible; drop hardware_compat or dla_core")


def dla_problem(engine: Mapping[str, Any] | None, available_cores: int) -> str | None:
    """Why an engine built for a DLA core cannot run on a device with ``available_cores`` DLA cores, or None."""
    core = (engine or {}).get("dla_core")
    if core is None:
        return None
    if available_cores <= 0:
        return (
            f"was built for DLA core {core}, and this device has no DLA; run it on the Jetson it was built "
            "for, or rebuild it without dla_core"
        )
    if int(core) >= available_cores:
        return (
            f"was built for DLA core {core}, and this device has only {available_cores} DLA core(s); "
            f"rebuild it with dla_core 0..{available_cores - 1}"
        )
    return None


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
            f"lower MAX to {model_max_batch} or export again with a larger max_batch"
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
    except (TypeError, ValueError, OverflowError):  # a manifest's value may be any JSON (Infinity too)
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


def check_implicit_int8_supported(tensorrt_module: Any) -> None:
    """Fail with one line unless this TensorRT still has the legacy implicit-INT8 path (10.x, not 11)."""
    has_calibrator = hasattr(tensorrt_module, "IInt8EntropyCalibrator2")
    has_flag = hasattr(getattr(tensorrt_module, "BuilderFlag", None), "INT8")
    if not (has_calibrator and has_flag):
        version = getattr(tensorrt_module, "__version__", "this release")
        raise BadInputError(
            f"implicit_int8 needs TensorRT 10.x (calibrator and INT8 builder flag); TensorRT {version} "
            "builds only strongly typed networks: build from the precision stage's Q/DQ INT8 ONNX "
            "(precision int8) instead"
        )


# TensorRT plumbing.


def require_tensorrt() -> None:
    import_optional("tensorrt", EXTRA)


_logger_lock = threading.Lock()
_logger_instance: Any = None


def make_trt_logger() -> trt.ILogger:
    """One TensorRT logger per process that forwards to :mod:`logging` (TensorRT wants a single logger)."""
    global _logger_instance
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
        if _logger_instance is None:
            _logger_instance = _ForwardingLogger()
        instance: trt.ILogger = _logger_instance
        return instance


def require_available(device: int = 0) -> str:
    """Describe the TensorRT release and GPU this machine builds with; raise if either is missing."""
    require_tensorrt()
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
