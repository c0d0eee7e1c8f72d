"""What the OpenVINO builder and runner share: the modules (telemetry off), the version, and what a device can run.

Telemetry: OpenVINO's converter and NNCF send usage data through the ``openvino_telemetry`` package when it
can be imported (NNCF by default, without asking). Before importing either, sedeploy marks that package
unimportable for the process and sets ``NNCF_CI`` (which NNCF reads only to stub its telemetry), so both use
their built-in no-op stubs: no prompt, no consent file, no network attempt. sedeploy never calls the
converter (``read_model`` reads the ONNX directly).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from sedeploy.artifacts.precision import FLOAT_TYPES, float_type_precision
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.host import matrix_units, onednn_units
from sedeploy.optional import import_optional

EXTRA = "openvino"
HINTS = ("latency", "throughput")
"""OpenVINO's ``PERFORMANCE_HINT`` values sedeploy runs with, in its own (lower-case) words."""
ARTIFACT_FORMAT = "openvino_ir"
_TELEMETRY_PACKAGE = "openvino_telemetry"

__all__ = [
    "ARTIFACT_FORMAT",
    "EXTRA",
    "FLOAT_TYPES",
    "HINTS",
    "can_run",
    "capabilities",
    "check_pins",
    "float_type_candidates",
    "nncf",
    "openvino",
    "require_available",
    "require_bf16",
    "require_runnable",
    "version",
]


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """While OpenVINO or NNCF is first imported, keep their telemetry off (see the module docstring).

    ``openvino_telemetry`` is unimportable during the import unless something imported
    it already (torch's dynamo backend discovery can), so both packages bind their
    no-op stubs; NNCF also honours ``NNCF_CI``, which only switches its telemetry to
    the stub. Both are restored afterwards, so the user's process is left as it was.
    """
    previous_env = os.environ.get("NNCF_CI")
    blocked = _TELEMETRY_PACKAGE not in sys.modules
    os.environ["NNCF_CI"] = "1"
    if blocked:
        sys.modules[_TELEMETRY_PACKAGE] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if blocked and sys.modules.get(_TELEMETRY_PACKAGE, 0) is None:
            del sys.modules[_TELEMETRY_PACKAGE]
        if previous_env is None:
            os.environ.pop("NNCF_CI", None)
        else:
            os.environ["NNCF_CI"] = previous_env


def openvino() -> ModuleType:
    """The openvino module with telemetry off, or a MissingDependencyError naming the extra."""
    with _telemetry_off():
        return import_optional("openvino", EXTRA)


def nncf() -> ModuleType:
    """The nncf module with telemetry off, or a MissingDependencyError naming the extra."""
    with _telemetry_off():
        return import_optional("nncf", EXTRA)


def version() -> str:
    """OpenVINO's version string (recorded in every IR's manifest)."""
    return str(openvino().get_version())


def require_available() -> str:
    """Describe the OpenVINO release that builds and runs IRs here; raise the missing extra if absent."""
    return f"OpenVINO {version()}"


def check_pins(float_type: str | None, hint: str | None) -> None:
    """Refuse a ``float_type`` or ``hint`` sedeploy does not know, naming the parameter and its valid values."""
    if float_type is not None and float_type not in FLOAT_TYPES:
        raise ConfigError(
            f"unknown float_type {float_type!r}; valid values: {', '.join(FLOAT_TYPES)}",
            params=("float_type",),
        )
    if hint is not None and hint not in HINTS:
        raise ConfigError(f"unknown hint {hint!r}; valid values: {', '.join(HINTS)}", params=("hint",))


def capabilities(core: Any, device: str = "CPU") -> set[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of ``device`` (``FP32``, ``BF16``, ``FP16``, ``INT8``, ...)."""
    return set(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))


def can_run(float_type: str, capable: set[str], device: str) -> bool:
    """True where ``device`` runs ``float_type``; BF16 on a CPU also needs BF16 units oneDNN may use.

    ``capable``: the device's :func:`capabilities`, which name a float type by its precision (``f16``: ``FP16``).
    """
    if float_type == "f32":
        return True
    if float_type_precision(float_type).upper() not in capable:
        return False
    if float_type == "bf16" and device == "CPU":
        return onednn_units(matrix_units()).best("bf16") is not None
    return True


def require_runnable(float_type: str, capable: set[str], device: str) -> None:
    """Refuse, in one line, a pinned ``float_type`` that ``device`` (with ``capable``) cannot run."""
    if not can_run(float_type, capable, device):
        raise BadInputError(
            f"this {device} cannot run float_type {float_type!r} "
            f"(matrix units: {onednn_units(matrix_units()).describe()}); pass another float_type or leave it unset"
        )


def require_bf16(core: Any, device: str = "CPU") -> None:
    """Refuse, in one line, a BF16 build or run on a device without BF16 arithmetic."""
    if not can_run("bf16", capabilities(core, device), device):
        raise BadInputError(
            f"this {device} has no BF16 units (matrix units: {onednn_units(matrix_units()).describe()}); "
            "build precision='int8' or 'fp32' instead"
        )


def float_type_candidates(core: Any, device: str, precision: str) -> tuple[str, ...]:
    """The float types the float parts of a ``precision`` IR may run in on ``device``, most accurate first.

    FP32 runs in f32 (FP32 means FP32 unless pinned); BF16 in bf16; FP16 in f16 or bf16 (whichever the device
    has); INT8's float layers in any of them.
    """
    if precision == "fp32":
        return ("f32",)
    if precision == "bf16":
        require_bf16(core, device)
        return ("bf16",)
    capable = capabilities(core, device)
    runnable = tuple(kind for kind in FLOAT_TYPES if can_run(kind, capable, device))
    if precision == "int8":
        return runnable
    half = tuple(kind for kind in runnable if kind != "f32")
    if not half:
        raise BadInputError(
            f"this {device} has neither FP16 nor BF16 arithmetic ({', '.join(sorted(capable))}); "
            "build precision='fp32' or 'int8' instead"
        )
    return half
