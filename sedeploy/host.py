"""Every fact sedeploy records about the machine it runs on: CPU model, instruction sets, usable cores, versions.

One module, so a manifest, a bench report and an optimized graph's CPU check all describe the host the same
way. The ``/proc/cpuinfo`` reading is cached per process; the parsing takes text, so a recorded ``cpuinfo``
of another machine is described the same way as this one's.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedeploy._version import __version__

CPU_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm", "bf16",
)  # fmt: skip
"""The CPU instruction-set flags that decide which kernels (and blocked layouts) a CPU runtime picks."""

REPORTED_CPU_FEATURES = frozenset(
    {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "avx_vnni"}
)
"""The instruction sets a report names: the ones that decide FP32, INT8 and BF16 kernel speed."""

_REPORTED_VERSIONS = ("onnxruntime", "onnxruntime-gpu", "torch", "openvino", "nncf", "tensorrt", "pycuda")


def parse_cpu_features(cpuinfo: str) -> tuple[str, ...]:
    """The :data:`CPU_FEATURES` flags named in a ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``), sorted."""
    return tuple(sorted(_flags(cpuinfo).intersection(CPU_FEATURES)))


def _flags(cpuinfo: str) -> frozenset[str]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


MATRIX_UNITS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    # precision -> (unit name, the cpuinfo flags that must all be present), fastest first.
    "int8": (
        ("AMX-INT8", ("amx_tile", "amx_int8")),
        ("AVX512-VNNI", ("avx512_vnni",)),
        ("AVX-VNNI", ("avx_vnni",)),
        ("Arm I8MM", ("i8mm",)),
        ("Arm DOTPROD", ("asimddp",)),
    ),
    "bf16": (
        ("AMX-BF16", ("amx_tile", "amx_bf16")),
        ("AVX512-BF16", ("avx512_bf16",)),
        ("Arm BF16", ("bf16",)),
    ),
    "fp16": (
        ("AMX-FP16", ("amx_tile", "amx_fp16")),
        ("AVX512-FP16", ("avx512_fp16",)),
        ("Arm FP16", ("asimdhp",)),
    ),
    "fp32": (
        ("AVX-512", ("avx512f",)),
        ("AVX2-FMA", ("avx2", "fma")),
        ("SVE", ("sve",)),
        ("NEON", ("asimd",)),
    ),
}
"""The CPU's matrix and dot-product units per arithmetic type, as ``/proc/cpuinfo`` names them (x86 and Arm)."""


@dataclass(frozen=True)
class MatrixUnits:
    """The matrix / dot-product units a CPU has, per arithmetic type, fastest first.

    Which units exist decides which precision can be fast here (AMX or VNNI for INT8, AMX-BF16 or AVX512-BF16
    for BF16) and which ISA a roof probe ran on; parsed from a ``cpuinfo`` text so any machine's recording is
    described the same way.
    """

    int8: tuple[str, ...] = ()
    bf16: tuple[str, ...] = ()
    fp16: tuple[str, ...] = ()
    fp32: tuple[str, ...] = ()

    def best(self, precision: str) -> str | None:
        """The fastest unit for ``precision`` (``int8``, ``bf16``, ``fp16``, ``fp32``), or None where there is none."""
        units: tuple[str, ...] = getattr(self, precision, ())
        return units[0] if units else None

    @property
    def has_amx(self) -> bool:
        return any(unit.startswith("AMX") for unit in (*self.int8, *self.bf16, *self.fp16))

    def describe(self) -> str:
        """One line, e.g. ``INT8 AMX-INT8 AVX512-VNNI AVX-VNNI; BF16 AMX-BF16 AVX512-BF16; FP16 ...; FP32 AVX-512``."""
        parts = [
            f"{precision.upper()} {' '.join(units) if units else 'none'}"
            for precision, units in self.to_dict().items()
        ]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "int8": list(self.int8),
            "bf16": list(self.bf16),
            "fp16": list(self.fp16),
            "fp32": list(self.fp32),
        }


def parse_matrix_units(cpuinfo: str) -> MatrixUnits:
    """The :class:`MatrixUnits` named by a ``/proc/cpuinfo`` text (its x86 ``flags`` or Arm ``Features``)."""
    flags = _flags(cpuinfo)
    found = {
        precision: tuple(name for name, needed in units if flags.issuperset(needed))
        for precision, units in MATRIX_UNITS.items()
    }
    return MatrixUnits(**found)


def matrix_units() -> MatrixUnits:
    """This CPU's :class:`MatrixUnits` (none known where ``/proc/cpuinfo`` cannot be read)."""
    return parse_matrix_units(_cpuinfo())


def describe_isa(cpuinfo: str | None = None) -> str:
    """The matrix-unit line of ``cpuinfo`` (default: this CPU), as bench, manifests and ``info --host`` show it."""
    units = matrix_units() if cpuinfo is None else parse_matrix_units(cpuinfo)
    return units.describe()


def parse_cpu_model(cpuinfo: str) -> str | None:
    """The ``model name`` line of a ``/proc/cpuinfo`` text, or None."""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_features() -> tuple[str, ...]:
    """This CPU's :data:`CPU_FEATURES` flags (sorted); empty where ``/proc/cpuinfo`` cannot be read.

    Read once per process: every optimized-graph load compares against it.
    """
    return parse_cpu_features(_cpuinfo())


def cpu_model() -> str:
    """This CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return parse_cpu_model(_cpuinfo()) or platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which container limits narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def describe_host() -> str:
    """One line naming this machine's CPU architecture, OS, core count and matrix units (``device.description``)."""
    return (
        f"{platform.machine()} {platform.system()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"matrix units: {describe_isa()}"
    )


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, instruction sets and library versions, for reports."""
    model = cpu_model()
    interesting = [flag for flag in cpu_features() if flag in REPORTED_CPU_FEATURES]
    import numpy as np

    versions = {"sedeploy": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for distribution in _REPORTED_VERSIONS:
        try:  # the installed distribution's version, without importing it
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    cores = os.cpu_count() or 1
    units = matrix_units()
    return {
        "description": f"{model}, {cores} cores, {platform.system()} {platform.machine()}"
        + (f", {' '.join(interesting)}" if interesting else "")
        + f" (matrix units: {units.describe()})",
        "cpu": model,
        "cores": cores,
        "instruction_sets": interesting,
        "matrix_units": units.to_dict(),
        "isa": units.describe(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "versions": versions,
    }


ONEDNN_ISA_LEVELS = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
)  # fmt: skip
"""oneDNN's ``ONEDNN_MAX_CPU_ISA`` values, lowest first (``AVX512_CORE_FP16`` and ``AVX512_CORE_AMX`` are aliases)."""

_ONEDNN_ALIASES = {
    "AVX512_CORE_FP16": "AVX10_1_512",
    "AVX512_CORE_AMX": "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16": "AVX10_1_512_AMX_FP16",
}
_UNIT_MIN_ONEDNN_ISA = {
    "AVX2-FMA": "AVX2",
    "AVX-VNNI": "AVX2_VNNI",
    "AVX-512": "AVX512_CORE",
    "AVX512-VNNI": "AVX512_CORE_VNNI",
    "AVX512-BF16": "AVX512_CORE_BF16",
    "AVX512-FP16": "AVX10_1_512",
    "AMX-INT8": "AVX10_1_512_AMX",
    "AMX-BF16": "AVX10_1_512_AMX",
    "AMX-FP16": "AVX10_1_512_AMX_FP16",
}


def onednn_units(units: MatrixUnits, max_isa: str | None = None) -> MatrixUnits:
    """The units oneDNN (OpenVINO's and torch's CPU kernels) may use under ``ONEDNN_MAX_CPU_ISA=max_isa``.

    ``max_isa`` defaults to the environment's; None or an unknown name leaves ``units`` as they are (oneDNN
    ignores a name it does not know). This is how a VNNI-only machine is simulated on an AMX one.
    """
    cap = max_isa if max_isa is not None else os.environ.get("ONEDNN_MAX_CPU_ISA")
    if not cap:
        return units
    cap = _ONEDNN_ALIASES.get(cap.upper(), cap.upper())
    if cap not in ONEDNN_ISA_LEVELS:
        return units
    level = ONEDNN_ISA_LEVELS.index(cap)

    def allowed(unit: str) -> bool:
        needed = _UNIT_MIN_ONEDNN_ISA.get(unit)
        return needed is None or ONEDNN_ISA_LEVELS.index(needed) <= level

    return MatrixUnits(
        **{precision: tuple(filter(allowed, found)) for precision, found in units.to_dict().items()}
    )


def host_report(cpuinfo: str | None = None) -> dict[str, Any]:
    """What ``sedeploy info --host`` reports: :func:`describe_machine` plus what oneDNN may use under its cap.

    ``cpuinfo``: describe a recorded ``/proc/cpuinfo`` text instead of this CPU (its units only; versions and
    cores stay this machine's).
    """
    report = describe_machine()
    units = matrix_units() if cpuinfo is None else parse_matrix_units(cpuinfo)
    if cpuinfo is not None:
        report.update(
            cpu=parse_cpu_model(cpuinfo) or "unknown", matrix_units=units.to_dict(), isa=units.describe()
        )
    report["usable_cores"] = usable_cores()
    report["onednn_matrix_units"] = onednn_units(units).to_dict()
    return report


def host_report_text(report: dict[str, Any] | None = None) -> str:
    """:func:`host_report` as aligned lines: the CPU, then each arithmetic type's units, fastest first."""
    report = report or host_report()
    lines = [f"{'cpu':<8} {report['cpu']}, {report['cores']} cores ({report['usable_cores']} usable)"]
    for precision, units in report["matrix_units"].items():
        lines.append(f"{precision:<8} {' '.join(units) if units else 'none'}")
    cap = report.get("onednn_max_cpu_isa")
    if cap:
        allowed = "; ".join(
            f"{precision.upper()} {' '.join(units) or 'none'}"
            for precision, units in report["onednn_matrix_units"].items()
        )
        lines.append(f"{'oneDNN':<8} ONEDNN_MAX_CPU_ISA={cap}: OpenVINO and torch may use {allowed}")
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items())
    lines.append(f"{'versions':<8} {versions}")
    return "\n".join(lines)
