"""The machine's roof, measured: dense GEMM probes per arithmetic, labelled with the engine and ISA that ran them.

On CPUs each roof kind is probed with the engine that reaches it: FP32 through ONNX Runtime's MLAS; INT8
u8 x s8 through MLAS and oneDNN (``torch._int_mm``), the higher counts; BF16 (and FP16) through oneDNN (a torch
matmul) where the CPU has those units and PyTorch is installed. Each probe runs at several sizes and keeps the
best: matrix units need size (AMX BF16 read 415 GFLOP/s at 1024^3 and 1,312 at 2048^3 on one Xeon), so a small
probe alone under-reads them. On NVIDIA GPUs the roof comes from a table of published dense peaks.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sedeploy.artifacts.precision import FLOAT_TYPE_PRECISION, float_type_precision
from sedeploy.errors import ConfigError, SedeployError
from sedeploy.host import engine_units, matrix_units, usable_cores
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

PROBE_SIZES = (1024, 2048)
"""GEMM sizes each probe runs at (the best counts): the larger one is what AMX and wide units need."""

GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    # (regex on the CUDA device name, dense (no sparsity) peaks in TFLOPS (FP32, FP16 tensor) and TOPS (INT8)).
    # H100 PCIe: NVIDIA H100 Tensor Core GPU datasheet (2023): FP32 51.2, FP16 756, INT8 1513 (dense).
    (r"H100.*PCIe", {"fp32": 51.2, "fp16": 756.0, "int8": 1513.0}),
    # H100 SXM5 ("NVIDIA H100 80GB HBM3"): same datasheet: FP32 66.9, FP16 989.4, INT8 1978.9 (dense).
    (r"H100", {"fp32": 66.9, "fp16": 989.4, "int8": 1978.9}),
    # H200: NVIDIA H200 datasheet (2024): same tensor-core peaks as H100 SXM.
    (r"H200", {"fp32": 66.9, "fp16": 989.4, "int8": 1978.9}),
    # A100 SXM4/PCIe: NVIDIA A100 datasheet (2021): FP32 19.5, FP16 312, INT8 624 (dense).
    (r"A100", {"fp32": 19.5, "fp16": 312.0, "int8": 624.0}),
    # L4: NVIDIA L4 datasheet (2023): FP32 30.3, FP16 121 dense (242 sparse), INT8 242.5 dense (485 sparse).
    (r"\bL4\b", {"fp32": 30.3, "fp16": 121.0, "int8": 242.5}),
    # T4: NVIDIA T4 datasheet (2019): FP32 8.1, FP16 65, INT8 130.
    (r"\bT4\b", {"fp32": 8.1, "fp16": 65.0, "int8": 130.0}),
    # Jetson AGX Orin 64GB, GPU only: Jetson AGX Orin series data sheet (2023): 170 sparse INT8 TOPS -> 85 dense.
    (r"Orin", {"fp32": 5.3, "fp16": 42.5, "int8": 85.0}),
)


def _gemm_model(kind: str, size: int) -> onnx.ModelProto:
    if kind == "int8":
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])
        weight = numpy_helper.from_array(
            np.random.default_rng(0).integers(-64, 64, (size, size), dtype=np.int8), "b"
        )
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        out = helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])
        weight = numpy_helper.from_array(
            np.random.default_rng(0).standard_normal((size, size)).astype(np.float32), "b"
        )
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        out = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([node], "gemm_probe", [a], [out], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm_probe(
    kind: str = "fp32", threads: int | None = None, seconds: float = 1.0, size: int = 1024
) -> float:
    """Measured dense GEMM rate of this CPU through ONNX Runtime, in GFLOP/s (GOP/s for ``int8``: u8 x s8)."""
    if kind not in ("fp32", "int8"):
        raise ConfigError(f"probe kind must be fp32 or int8, got {kind!r}")
    ort = import_optional("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = (
        threads or usable_cores()
    )  # as many threads as the sessions it is compared with
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        _gemm_model(kind, size).SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    a = (
        rng.integers(0, 128, (size, size), dtype=np.uint8)
        if kind == "int8"
        else rng.standard_normal((size, size), dtype=np.float32)
    )
    session.run(None, {"a": a})
    calls, started = 0, time.perf_counter()
    while True:
        session.run(None, {"a": a})
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 3:
            break
    return 2.0 * size**3 * calls / elapsed / 1e9


def torch_gemm_probe(kind: str, threads: int | None = None, seconds: float = 1.0, size: int = 1024) -> float:
    """Measured dense GEMM rate through torch's oneDNN kernels: ``bf16`` / ``fp16`` matmul, ``int8`` ``_int_mm``.

    The engine OpenVINO and torch share; ``ONEDNN_MAX_CPU_ISA`` caps it as it caps them. GFLOP/s (GOP/s for INT8).
    """
    if kind not in ("bf16", "fp16", "int8"):
        raise ConfigError(f"torch probe kind must be bf16, fp16 or int8, got {kind!r}")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or usable_cores())
    try:
        generator = torch.Generator().manual_seed(0)
        if kind == "int8":
            a = torch.randint(0, 64, (size, size), dtype=torch.int8, generator=generator)
            b = torch.randint(-64, 64, (size, size), dtype=torch.int8, generator=generator)

            def step() -> Any:
                return torch._int_mm(a, b)

        else:
            dtype = torch.bfloat16 if kind == "bf16" else torch.float16
            a = torch.randn((size, size), generator=generator).to(dtype)
            b = torch.randn((size, size), generator=generator).to(dtype)

            def step() -> Any:
                return a @ b

        with torch.inference_mode():
            step()
            calls, started = 0, time.perf_counter()
            while True:
                step()
                calls += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds and calls >= 3:
                    break
    finally:
        torch.set_num_threads(previous)
    return 2.0 * size**3 * calls / elapsed / 1e9


@dataclass(frozen=True)
class RoofProbe:
    """One roof measurement: the arithmetic, the engine that ran it, the ISA it ran on, and how."""

    kind: str
    engine: str
    isa: str
    measure: Callable[[int | None, float], float]

    @property
    def label(self) -> str:
        return f"{self.engine}, {self.isa}"


def best_over_sizes(
    probe: Callable[..., float],
    kind: str,
    threads: int | None,
    seconds: float,
    sizes: Sequence[int] = PROBE_SIZES,
) -> float:
    """The highest rate ``probe(kind, threads, seconds, size)`` reads over ``sizes``, the time split among them."""
    return max(probe(kind, threads, seconds / len(sizes), size) for size in sizes)


def cpu_roof_probes(kinds: Sequence[str], units: Any = None) -> dict[str, list[RoofProbe]]:
    """The probes for each roof kind this CPU can run, labelled with the ISA each runs on.

    ``units``: the :class:`~sedeploy.host.MatrixUnits` to plan for (default this CPU's). FP32 and INT8 through
    ONNX Runtime's MLAS (its AMX kernel since 1.14, else VNNI); INT8 also through oneDNN, capped by
    ``ONEDNN_MAX_CPU_ISA``; BF16 and FP16 through oneDNN only where those units exist (else no such roof).
    """
    units = units if units is not None else matrix_units()
    mlas = engine_units("onnxruntime", units)  # the units MLAS's kernels use (NEON for FP32 on Arm, not SVE)
    capped = engine_units("torch", units)  # oneDNN, capped by ONEDNN_MAX_CPU_ISA
    probes: dict[str, list[RoofProbe]] = {}
    for kind in kinds:
        if kind == "fp32":
            probes[kind] = [
                RoofProbe(
                    kind,
                    "ONNX Runtime MLAS fp32",
                    mlas.best("fp32") or "scalar",
                    functools.partial(best_over_sizes, gemm_probe, "fp32"),
                )
            ]
        elif kind == "int8":
            probes[kind] = [
                RoofProbe(
                    kind,
                    "ONNX Runtime MLAS u8s8",
                    mlas.best("int8") or mlas.best("fp32") or "scalar",
                    functools.partial(best_over_sizes, gemm_probe, "int8"),
                ),
                RoofProbe(
                    kind,
                    "oneDNN s8s8 (torch._int_mm)",
                    capped.best("int8") or capped.best("fp32") or "scalar",
                    functools.partial(best_over_sizes, torch_gemm_probe, "int8"),
                ),
            ]
        elif kind in ("bf16", "fp16") and capped.best(kind) is not None:
            probes[kind] = [
                RoofProbe(
                    kind,
                    f"oneDNN {kind} (torch matmul)",
                    str(capped.best(kind)),
                    functools.partial(best_over_sizes, torch_gemm_probe, kind),
                )
            ]
    return probes


def gpu_peak_gflops(gpu_name: str, precision: str) -> float | None:
    """Published dense peak of a known GPU model in GFLOP/s (GOP/s for INT8), or None if not in the table."""
    for pattern, peaks in GPU_PEAK_TFLOPS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return peaks.get(precision, peaks["fp32"]) * 1e3
    return None


def _run_roof_probes(
    plan: dict[str, list[RoofProbe]],
    threads: int | None,
    seconds: float,
    runs: dict[str, list[float]],
    best: dict[str, str],
) -> None:
    """Run every planned probe once; per kind, append the highest engine's figure and remember its label."""
    for kind, probes in plan.items():
        figures = []
        for probe in probes:
            try:
                figures.append((probe.measure(threads, seconds), probe.label))
            except (RuntimeError, ImportError, SedeployError) as error:  # an engine that cannot probe here
                logger.info("roof probe %s (%s) could not run: %s", kind, probe.label, error)
        if not figures:
            continue
        value, label = max(figures)
        logger.info("roof probe %s: %.0f GFLOP/s (%s)", kind, value, label)
        if not runs[kind] or value > max(runs[kind]):
            best[kind] = label
        runs[kind].append(value)


def roof_kind(precision: str, float_type: str | None = None) -> str:
    """The roof that divides an artifact: INT8 by the INT8 roof; else the float type it computes in.

    ``float_type``: what the runner computes its float parts in (an OpenVINO runner's ``f32``/``bf16``/``f16``).
    """
    if precision == "int8":
        return "int8"
    if float_type in FLOAT_TYPE_PRECISION and float_type != "f32":
        return float_type_precision(float_type)
    if precision == "bf16":
        return "bf16"
    return "fp32"
