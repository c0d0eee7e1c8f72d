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
from pathlib import Path
from typing import Any

from sedeploy._version import __version__

CPU_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm", "bf16",
)  # fmt: skip
"""The CPU instruction-set flags that decide which kernels (and blocked layouts) a CPU runtime picks."""

REPORTED_CPU_FEATURES = frozenset(
    {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx_vnni"}
)
"""The instruction sets a report names: the ones that decide FP32, INT8 and BF16 kernel speed."""

_REPORTED_VERSIONS = ("onnxruntime", "onnxruntime-gpu", "torch", "openvino", "nncf", "tensorrt", "pycuda")


def parse_cpu_features(cpuinfo: str) -> tuple[str, ...]:
    """The :data:`CPU_FEATURES` flags named in a ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``), sorted."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(sorted(flags.intersection(CPU_FEATURES)))


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
    """One line naming this machine's CPU architecture, OS and core count (a manifest's ``device.description``)."""
    return (
        f"{platform.machine()} {platform.system()} {os.cpu_count()} cores, Python {platform.python_version()}"
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
    return {
        "description": f"{model}, {cores} cores, {platform.system()} {platform.machine()}"
        + (f", {' '.join(interesting)}" if interesting else ""),
        "cpu": model,
        "cores": cores,
        "instruction_sets": interesting,
        "versions": versions,
    }
