"""Every fact sedeploy records about the machine it runs on: CPU model, instruction sets, usable cores, versions.

One module, so a manifest, a bench report and an optimized graph's CPU check all describe the host the same
way: :func:`usable_cores` is the one core count (threads and reports), :func:`describe_machine` the one
machine description (its ``description`` line is what manifests record). The ``/proc/cpuinfo`` reading is
cached per process; the parsing takes text, so a recorded ``cpuinfo`` of another machine (an x86 ``flags``
line, or an Arm ``Features`` line with ``CPU implementer`` / ``CPU part`` numbers) is described the same way.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedeploy._version import __version__
from sedeploy.errors import ConfigError

CPU_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm", "bf16",
)  # fmt: skip
"""The CPU instruction-set flags that decide which kernels (and blocked layouts) a CPU runtime picks."""

REPORTED_CPU_FEATURES = frozenset(
    {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "avx_vnni"}
    | {"asimddp", "i8mm", "bf16", "sve"}
)
"""The instruction sets a report names: the ones that decide FP32, INT8 and BF16 kernel speed (x86 and Arm)."""

_REPORTED_VERSIONS = ("onnxruntime", "onnxruntime-gpu", "torch", "openvino", "nncf", "tensorrt", "pycuda")


def parse_cpu_features(cpuinfo: str) -> tuple[str, ...]:
    """The :data:`CPU_FEATURES` flags named in a ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``), sorted."""
    return tuple(sorted(_flags(cpuinfo).intersection(CPU_FEATURES)))


def _flags(cpuinfo: str) -> frozenset[str]:
    """Every flag of a cpuinfo text: x86 ``flags`` lines, Arm ``Features`` lines (no x86 ``vmx flags``)."""
    return frozenset(
        flag for line in (*_fields(cpuinfo, "flags"), *_fields(cpuinfo, "Features")) for flag in line.split()
    )


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
        ("SVE2", ("sve2",)),
        ("SVE", ("sve",)),
        ("NEON", ("asimd",)),
    ),
}
"""The CPU's matrix and dot-product units per arithmetic type, as ``/proc/cpuinfo`` names them (x86 and Arm).

Arm: ``asimddp`` is the INT8 dot product (SDOT/UDOT, Armv8.2+: Cortex-A76, A78AE), ``i8mm`` the INT8 matrix
multiply (SMMLA/UMMLA, Armv8.6: Neoverse V1/V2), ``bf16`` BFDOT/BFMMLA, ``asimdhp`` FP16 arithmetic; ``sve`` /
``sve2`` the scalable vectors.
"""


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

    @property
    def is_arm(self) -> bool:
        """Whether these are an Arm CPU's units (every AArch64 CPU has NEON, no x86 one does)."""
        return "NEON" in self.fp32

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


ARM_IMPLEMENTERS = {
    0x41: "Arm", 0x42: "Broadcom", 0x43: "Cavium", 0x46: "Fujitsu", 0x48: "HiSilicon", 0x4E: "NVIDIA",
    0x51: "Qualcomm", 0x61: "Apple", 0x6D: "Microsoft", 0xC0: "Ampere",
}  # fmt: skip
"""``CPU implementer`` codes of ``/proc/cpuinfo`` on Arm (the MIDR implementer byte), as Linux's cputype.h lists them."""

ARM_PARTS = {
    (0x41, 0xD03): "Cortex-A53", (0x41, 0xD04): "Cortex-A35", (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57", (0x41, 0xD08): "Cortex-A72", (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75", (0x41, 0xD0B): "Cortex-A76", (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77", (0x41, 0xD0E): "Cortex-A76AE", (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78", (0x41, 0xD42): "Cortex-A78AE", (0x41, 0xD44): "Cortex-X1",
    (0x41, 0xD46): "Cortex-A510", (0x41, 0xD47): "Cortex-A710", (0x41, 0xD48): "Cortex-X2",
    (0x41, 0xD49): "Neoverse-N2", (0x41, 0xD4A): "Neoverse-E1", (0x41, 0xD4B): "Cortex-A78C",
    (0x41, 0xD4D): "Cortex-A715", (0x41, 0xD4E): "Cortex-X3", (0x41, 0xD4F): "Neoverse-V2",
    (0x41, 0xD80): "Cortex-A520", (0x41, 0xD81): "Cortex-A720", (0x41, 0xD82): "Cortex-X4",
    (0x41, 0xD84): "Neoverse-V3", (0x41, 0xD8E): "Neoverse-N3",
    (0x46, 0x001): "A64FX", (0x48, 0xD01): "TaiShan-v110", (0x4E, 0x003): "Denver-2", (0x4E, 0x004): "Carmel",
    (0x51, 0x001): "Oryon", (0xC0, 0xAC3): "AmpereOne",
}  # fmt: skip
"""``(CPU implementer, CPU part)`` -> core name, as ``lscpu`` names them: Cortex-A78AE is Jetson AGX Orin's core,
Neoverse-V1 Graviton3's, Cortex-A76 Raspberry Pi 5's, Neoverse-N1 Graviton2's and Ampere Altra's."""

_GENERIC_MODEL_NAME = re.compile(r"^ARMv\d+ Processor rev \d+")
"""NVIDIA's L4T kernel (Jetson) prints ``model name : ARMv8 Processor rev 1 (v8l)``: no model; the part says it."""


def _fields(cpuinfo: str, key: str) -> list[str]:
    """The values of every ``key : value`` line of a cpuinfo text (keys compared exactly, tabs stripped)."""
    values = []
    for line in cpuinfo.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() == key:
            values.append(value.strip())
    return values


def parse_arm_cores(cpuinfo: str) -> tuple[str, ...]:
    """The distinct Arm core types of a cpuinfo text, in order (``Arm Cortex-A76``; two on a big.LITTLE SoC).

    Read from each processor's ``CPU implementer`` and ``CPU part`` numbers; a part missing from
    :data:`ARM_PARTS` reads ``Arm part 0xd99``. Empty for an x86 text.
    """
    cores: list[str] = []
    implementer: int | None = None
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        try:
            number = int(value.strip(), 16)
        except ValueError:
            continue
        if name.strip() == "CPU implementer":
            implementer = number
        elif name.strip() == "CPU part" and implementer is not None:
            vendor = ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer:#x}")
            core = f"{vendor} {ARM_PARTS.get((implementer, number), f'part {number:#x}')}"
            if core not in cores:
                cores.append(core)
    return tuple(cores)


def parse_cpu_model(cpuinfo: str) -> str | None:
    """The CPU's name in a ``/proc/cpuinfo`` text, or None.

    x86: the ``model name`` line. Arm prints no model name (Jetson's kernel prints a generic ``ARMv8 Processor``):
    the core types from the implementer and part numbers, ``Arm Neoverse-V1`` or ``Arm Cortex-A76 + Cortex-A55``.
    """
    named = next(iter(_fields(cpuinfo, "model name")), None)
    if named and not _GENERIC_MODEL_NAME.match(named):
        return named
    cores = parse_arm_cores(cpuinfo)
    if cores:
        vendor = cores[0].split(" ", 1)[0]
        return " + ".join(
            core.removeprefix(f"{vendor} ") if index else core for index, core in enumerate(cores)
        )
    return named


def parse_board(cpuinfo: str) -> str | None:
    """The board a cpuinfo text names (Raspberry Pi kernels end it with ``Model : Raspberry Pi 5 ...``), or None."""
    return next(iter(_fields(cpuinfo, "Model")), None)


def parse_processor_count(cpuinfo: str) -> int:
    """How many processors (online logical CPUs) a cpuinfo text lists."""
    return len(_fields(cpuinfo, "processor"))


def _architecture(cpuinfo: str) -> str:
    """The machine architecture a recorded cpuinfo text is from (Arm texts carry ``CPU implementer`` lines)."""
    if _fields(cpuinfo, "CPU implementer"):
        return "aarch64"
    return "x86_64" if _fields(cpuinfo, "flags") else "unknown"


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
    """This CPU's name (``/proc/cpuinfo``: x86 model name, Arm core types), else what :mod:`platform` knows."""
    return parse_cpu_model(_cpuinfo()) or platform.processor() or platform.machine()


def board_model() -> str | None:
    """The board this runs on where the firmware names it (Jetson, Raspberry Pi: the device tree), else None."""
    try:
        named = Path("/proc/device-tree/model").read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        named = ""
    return named or parse_board(_cpuinfo())


CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where Linux mounts the cgroup hierarchies (v2 at the root; v1 one folder per controller, ``cpu``)."""


def cgroup_cpu_limit(root: Path | None = None, membership: str | None = None) -> float | None:
    """The CPUs' worth of time this process's cgroups allow, or None where no quota applies (or none is readable).

    A container started with ``--cpus=2`` on a 16-core machine keeps all 16 cores in its affinity mask but
    gets 2 CPUs of time: 16 threads there are throttled. Read from cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the tightest over the process's cgroup and those above it.
    ``membership``: a ``/proc/self/cgroup`` text (default this process's); ``root``: where cgroups are mounted
    (default :data:`CGROUP_ROOT`).
    """
    root = root if root is not None else CGROUP_ROOT
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text(encoding="utf-8")
        except OSError:
            return None
    limits: list[float] = []
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:  # cgroup v2: one hierarchy at the root
            limits += _quota_limits(root, path, _cgroup2_limit)
        elif "cpu" in controllers.split(","):
            for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                limits += _quota_limits(root / mount, path, _cgroup1_limit)
    return min(limits, default=None)


def _quota_limits(base: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """Each quota found from ``base/path`` up to ``base`` (the cgroup may be mounted as the root in a container)."""
    found: list[float] = []
    folder = base / path.strip("/")
    while True:
        if folder.is_dir():
            try:
                limit = read(folder)
            except (OSError, ValueError):
                limit = None
            if limit is not None:
                found.append(limit)
        if folder == base or base not in folder.parents:
            return found
        folder = folder.parent


def _cgroup2_limit(folder: Path) -> float | None:
    if not (folder / "cpu.max").is_file():
        return None
    quota, period = (folder / "cpu.max").read_text(encoding="utf-8").split()[:2]
    return None if quota == "max" else int(quota) / int(period)


def _cgroup1_limit(folder: Path) -> float | None:
    if not (folder / "cpu.cfs_quota_us").is_file():
        return None
    quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
    return None if quota <= 0 else quota / int((folder / "cpu.cfs_period_us").read_text(encoding="utf-8"))


def usable_cores() -> int:
    """Cores this process may run on, at least 1: the one core count for threads and reports.

    Its CPU affinity (which ``taskset`` and container cpusets narrow), capped by the cgroup CPU quota
    (``--cpus``) rounded up: more threads than that only queue for the quota.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def describe_host() -> str:
    """The one-line machine description a manifest records (``device.description``): :func:`describe_machine`'s."""
    return str(_machine_facts(None)["description"])


def describe_machine(cpuinfo: str | None = None) -> dict[str, Any]:
    """The one machine description for reports: CPU, board, cores, instruction sets, matrix units, versions.

    ``cores`` is :func:`usable_cores` (what threads run on); ``logical_cpus`` the machine's, so a 2-of-16-core
    container reads ``2 of 16 cores``. ``cpuinfo``: describe a recorded ``/proc/cpuinfo`` text instead of this
    CPU (its processors count as its cores; versions stay this machine's).
    """
    import numpy as np

    versions = {"sedeploy": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for distribution in _REPORTED_VERSIONS:
        try:  # the installed distribution's version, without importing it
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        **_machine_facts(cpuinfo),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "versions": versions,
    }


def _machine_facts(cpuinfo: str | None) -> dict[str, Any]:
    """Every CPU fact of this machine (``cpuinfo`` None) or of a recorded cpuinfo text, and the line naming them."""
    if cpuinfo is None:
        text, model, board = _cpuinfo(), cpu_model(), board_model()
        cores, logical, system, machine = (
            usable_cores(),
            os.cpu_count() or 1,
            platform.system(),
            platform.machine(),
        )
    else:
        text, model, board = cpuinfo, parse_cpu_model(cpuinfo) or "unknown", parse_board(cpuinfo)
        cores = logical = max(1, parse_processor_count(cpuinfo))
        system, machine = "Linux", _architecture(cpuinfo)
    interesting = [flag for flag in parse_cpu_features(text) if flag in REPORTED_CPU_FEATURES]
    units = parse_matrix_units(text)
    counted = f"{cores} cores" if cores >= logical else f"{cores} of {logical} cores"
    return {
        "description": f"{model}{f' ({board})' if board else ''}, {counted}, {system} {machine}"
        + (f", {' '.join(interesting)}" if interesting else "")
        + f" (matrix units: {units.describe()})",
        "cpu": model,
        "board": board,
        "cores": cores,
        "logical_cpus": logical,
        "architecture": machine,
        "instruction_sets": interesting,
        "matrix_units": units.to_dict(),
        "isa": units.describe(),
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
    ignores a name it does not know). This is how a VNNI-only machine is simulated on an AMX one. Arm units
    pass through: oneDNN's Arm caps (``SVE_256``, ...) choose vector lengths, and its matrix kernels there come
    from the Arm Compute Library, which dispatches on its own.
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


ENGINES = ("onnxruntime", "openvino", "torch")
"""The CPU engines whose kernels :func:`engine_units` knows."""

_ARM_VECTOR_UNITS = ("SVE2", "SVE")


def engine_units(engine: str, units: MatrixUnits | None = None, max_isa: str | None = None) -> MatrixUnits:
    """The units ``engine``'s CPU kernels run on here (default this CPU's ``units``): a roof's ISA label, and
    which precisions that engine can make fast on this CPU.

    - ``onnxruntime`` (MLAS): INT8 on the CPU's fastest INT8 unit (AMX, VNNI; Arm I8MM's UMMLA, else DOTPROD's
      UDOT); FP32 on AVX-512 / AVX2-FMA, on Arm NEON only (MLAS's SGEMM has no SVE kernel; SVE serves its
      element-wise kernels); FP16 only on Arm (its FP16 NHWC convolutions), none on x86 (an FP16 file runs in
      FP32 there); no BF16 (the Arm BF16 GEMM needs the ``mlas.enable_gemm_fastmath_arm64_bfloat16`` session
      option, which sedeploy does not set).
    - ``torch``: :func:`onednn_units` (on Arm, oneDNN with the Arm Compute Library: BF16 through BFMMLA).
    - ``openvino``: :func:`onednn_units`, without BF16 on Arm (OpenVINO's Arm plugin infers in FP32 or FP16).
    """
    units = units if units is not None else matrix_units()
    if engine == "onnxruntime":
        return MatrixUnits(
            int8=units.int8,
            bf16=(),
            fp16=units.fp16 if units.is_arm else (),
            fp32=tuple(unit for unit in units.fp32 if unit not in _ARM_VECTOR_UNITS),
        )
    if engine == "torch":
        return onednn_units(units, max_isa)
    if engine == "openvino":
        capped = onednn_units(units, max_isa)
        return MatrixUnits(
            int8=capped.int8,
            bf16=tuple(unit for unit in capped.bf16 if not unit.startswith("Arm")),
            fp16=capped.fp16,
            fp32=capped.fp32,
        )
    raise ConfigError(f"unknown engine {engine!r}; valid values: {', '.join(ENGINES)}")


def host_report(cpuinfo: str | None = None) -> dict[str, Any]:
    """What ``sedeploy info --host`` reports: :func:`describe_machine` plus what oneDNN may use under its cap.

    ``cpuinfo``: describe a recorded ``/proc/cpuinfo`` text instead of this CPU (versions stay this machine's).
    """
    report = describe_machine(cpuinfo)
    units = matrix_units() if cpuinfo is None else parse_matrix_units(cpuinfo)
    report["onednn_matrix_units"] = onednn_units(units).to_dict()
    return report


def host_report_text(report: dict[str, Any] | None = None) -> str:
    """:func:`host_report` as aligned lines: the CPU, then each arithmetic type's units, fastest first."""
    report = report or host_report()
    counted = (
        f"{report['cores']} cores"
        if report["cores"] >= report["logical_cpus"]
        else f"{report['cores']} of {report['logical_cpus']} cores usable"
    )
    lines = [f"{'cpu':<8} {report['cpu']}, {counted}"]
    if report.get("board"):
        lines.append(f"{'board':<8} {report['board']}")
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
