"""``sedeploy bench``: throughput and latency of artifacts against their GFLOPs and the machine's own roof.

Per artifact and batch size: images/s, latency mean/p50/p90/p99, the model's
GMACs and GFLOPs per image (from its ONNX metadata, i.e. the one estimator in
:mod:`sedeploy.models.complexity`), achieved GFLOP/s and the share of the device's roof.
On CPUs the roof is measured in the same run, per precision, with the engine that
reaches it (:func:`cpu_roof_probes`): FP32 through ONNX Runtime's MLAS; INT8 u8 x s8
through MLAS and oneDNN (``torch._int_mm``), the higher counts; BF16 (and FP16) through
oneDNN (a torch matmul) where the CPU has those units. Each probe is labelled with the
ISA that ran it and taken before the timings and after every round, interleaved with
the rows it divides (under load a probe reads a fraction of the roof), keeping the
highest figure. A row's share is against the roof of the arithmetic it runs in (an
OpenVINO runner's float type counts). A share above 100% means the probe
under-measured: it is reported as a probe problem, never as a figure. On
NVIDIA GPUs the roof comes from a table of published dense peaks. Several artifacts
are run interleaved (A B A B ...) so a noisy machine affects all alike, with
ONNX Runtime's spinning threads paused between samples. Runners that can time
their compute alone (TensorRT, with CUDA events) add compute-only columns, so the
host<->device copy cost shows as the difference.

:func:`compare` is ``sedeploy bench MODEL.onnx --compare``: from one exported
FP32 ONNX it finds or builds the FP16 and INT8 artifacts (and TensorRT engines
where TensorRT and a GPU are present) and benches them against PyTorch eager.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sedeploy._version import __version__
from sedeploy.backends.base import Runner
from sedeploy.errors import ConfigError, SedeployError
from sedeploy.files import atomic_output, write_json_atomic
from sedeploy.host import describe_machine, matrix_units, onednn_units, usable_cores
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

DEFAULT_BATCHES = (1, 8)
ROOF_WARNING_SHARE = 1.0
"""A share of roof above this means the probe under-measured the machine; it is flagged, not hidden."""

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


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one artifact at one batch size, from per-call wall times."""

    batch: int
    calls: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float

    @classmethod
    def from_times(cls, seconds: Sequence[float], batch: int) -> LatencyStats:
        """Statistics of per-call times in seconds; images/s = calls x batch / total time."""
        if not seconds:
            raise ValueError("no timings to summarise")
        times_ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
        return cls(
            batch=batch,
            calls=len(times_ms),
            mean_ms=float(times_ms.mean()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            images_per_s=float(batch * len(times_ms) / (times_ms.sum() / 1e3)),
        )

    @property
    def median_images_per_s(self) -> float:
        """Images/s of the median call: on cores other processes share, their bursts land in the mean, not here."""
        return self.batch * 1e3 / self.p50_ms


@dataclass(frozen=True)
class BenchRow:
    """One artifact at one batch size, with its compute figures."""

    artifact: str
    label: str
    precision: str
    backend: str
    stats: LatencyStats
    gmacs_per_image: float
    roof_gflops: float | None
    ratio_to_first: float | None = None
    compute: LatencyStats | None = None
    """GPU time of the engine alone per call (CUDA events), for runners that offer ``time_compute``."""
    roof_kind: str | None = None
    """Which roof divides this row: ``fp32``, ``bf16``, ``fp16`` or ``int8`` (the arithmetic it runs in)."""

    @property
    def gflops_per_image(self) -> float:
        return 2 * self.gmacs_per_image

    @property
    def achieved_gflops(self) -> float:
        """GFLOPs per image x images/s."""
        return self.gflops_per_image * self.stats.images_per_s

    @property
    def measured_share(self) -> float | None:
        """Achieved over roof as measured, above 1 when the probe under-measured (use :attr:`roof_share`)."""
        return self.achieved_gflops / self.roof_gflops if self.roof_gflops else None

    @property
    def roof_share(self) -> float | None:
        """Share of its own precision's roof; None without a roof or when above 100% (:attr:`roof_problem`)."""
        share = self.measured_share
        return share if share is not None and share <= ROOF_WARNING_SHARE else None

    @property
    def roof_problem(self) -> str | None:
        """A line naming the probe problem when this row beats its roof, else None."""
        share = self.measured_share
        if share is None or share <= ROOF_WARNING_SHARE:
            return None
        return (
            f"{self.label} at batch {self.stats.batch} ran {self.achieved_gflops:.0f} GFLOP/s, above the "
            f"{self.roof_kind or 'measured'} roof probe's {self.roof_gflops:.0f}: the probe under-measured this "
            "machine (load, or an engine the probe does not use); no share is given"
        )

    @property
    def copy_ms(self) -> float | None:
        """Mean end-to-end ms minus mean compute-only ms: host<->device copies and host overhead per call."""
        return self.stats.mean_ms - self.compute.mean_ms if self.compute is not None else None

    def to_dict(self) -> dict[str, Any]:
        compute = self.compute
        return {
            "artifact": self.artifact,
            "label": self.label,
            "precision": self.precision,
            "backend": self.backend,
            **asdict(self.stats),
            "gmacs_per_image": self.gmacs_per_image,
            "gflops_per_image": self.gflops_per_image,
            "achieved_gflops": self.achieved_gflops,
            "roof_gflops": self.roof_gflops,
            "roof_kind": self.roof_kind,
            "roof_share": self.roof_share,
            "roof_share_suspect": self.roof_problem is not None,
            "roof_problem": self.roof_problem,
            "ratio_to_first": self.ratio_to_first,
            "compute_mean_ms": compute.mean_ms if compute else None,
            "compute_p50_ms": compute.p50_ms if compute else None,
            "compute_p99_ms": compute.p99_ms if compute else None,
            "compute_images_per_s": compute.images_per_s if compute else None,
            "copy_ms": self.copy_ms,
        }


@dataclass(frozen=True)
class OpProfile:
    """Where one artifact's time goes at one batch size: kernel ms per call for each op type, largest first."""

    artifact: str
    label: str
    batch: int
    runs: int
    ops: tuple[tuple[str, float], ...]

    @property
    def total_ms(self) -> float:
        return sum(ms for _, ms in self.ops)

    def share(self, op: str) -> float:
        """Share of kernel time spent in ``op`` (0 when it does not run)."""
        total = self.total_ms
        return sum(ms for name, ms in self.ops if name == op) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "label": self.label,
            "batch": self.batch,
            "runs": self.runs,
            "kernel_ms_per_call": self.total_ms,
            "ops": [{"op": op, "ms_per_call": ms, "share": self.share(op)} for op, ms in self.ops],
        }

    def to_markdown(self, top: int = 12) -> str:
        lines = [
            f"Per-op profile of {self.label} at batch {self.batch} (ONNX Runtime CPU, {self.runs} calls, "
            f"{self.total_ms:.2f} ms kernel time per call):",
            "",
            "| op type | ms per call | share |",
            "|---|---|---|",
        ]
        lines += [f"| {op} | {ms:.3f} | {100 * self.share(op):.1f}% |" for op, ms in self.ops[:top]]
        rest = self.ops[top:]
        if rest:
            rest_ms = sum(ms for _, ms in rest)
            lines.append(
                f"| {len(rest)} other op types | {rest_ms:.3f} | {100 * rest_ms / self.total_ms:.1f}% |"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class BenchReport:
    """Every row of one bench run, the roof probes, per-op profiles if asked for, and the machine."""

    rows: tuple[BenchRow, ...]
    probes: dict[str, float]
    machine: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    profiles: tuple[OpProfile, ...] = ()
    notes: tuple[str, ...] = ()
    """What the run left out or built, one line each (e.g. ``--compare`` skipping TensorRT)."""
    probe_labels: dict[str, str] = field(default_factory=dict)
    """Per roof kind: the engine and ISA that reached it, e.g. ``ONNX Runtime MLAS u8s8, AVX512-VNNI``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "sedeploy_version": __version__,
            "machine": self.machine,
            "settings": self.settings,
            "roof_probes_gflops": self.probes,
            "roof_probe_labels": self.probe_labels,
            "rows": [row.to_dict() for row in self.rows],
            "profiles": [profile.to_dict() for profile in self.profiles],
            "notes": list(self.notes),
        }

    def to_markdown(self) -> str:
        header = (
            "| artifact | precision | backend | batch | img/s | mean ms | p50 ms | p90 ms | p99 ms "
            "| GFLOPs/img | GFLOP/s | roof GFLOP/s | share of roof | vs first |"
        )
        lines = [header, "|" + "---|" * 14]
        for row in self.rows:
            share = row.roof_share
            share_text = (
                "probe problem (see below)"
                if row.roof_problem
                else "-"
                if share is None
                else f"{100 * share:.1f}%"
            )
            roof_text = f"{row.roof_gflops or 0:.0f}" + (f" ({row.roof_kind})" if row.roof_kind else "")
            stats = row.stats
            lines.append(
                f"| {row.label} | {row.precision} | {row.backend} | {stats.batch} | {stats.images_per_s:.1f} "
                f"| {stats.mean_ms:.2f} | {stats.p50_ms:.2f} | {stats.p90_ms:.2f} | {stats.p99_ms:.2f} "
                f"| {row.gflops_per_image:.3f} | {row.achieved_gflops:.1f} "
                f"| {roof_text} | {share_text} "
                f"| {'-' if row.ratio_to_first is None else f'{row.ratio_to_first:.2f}x'} |"
            )
        timed = [row for row in self.rows if row.compute is not None]
        if timed:
            lines += [
                "",
                "Compute only (CUDA events around the engine alone; copies = end-to-end minus compute):",
                "",
                "| artifact | batch | end-to-end mean ms | compute mean ms | compute p50 ms | compute p99 ms "
                "| compute img/s | copies + host ms | copy share |",
                "|" + "---|" * 9,
            ]
            for row in timed:
                assert row.compute is not None and row.copy_ms is not None
                lines.append(
                    f"| {row.label} | {row.stats.batch} | {row.stats.mean_ms:.3f} | {row.compute.mean_ms:.3f} "
                    f"| {row.compute.p50_ms:.3f} | {row.compute.p99_ms:.3f} | {row.compute.images_per_s:.1f} "
                    f"| {row.copy_ms:.3f} | {100 * row.copy_ms / row.stats.mean_ms:.0f}% |"
                )
        probes = "; ".join(
            f"{name} {value:.0f} {'GOP/s' if name == 'int8' else 'GFLOP/s'}"
            + (f" ({self.probe_labels[name]})" if name in self.probe_labels else "")
            for name, value in self.probes.items()
        )
        lines += [
            "",
            f"Roof probes (dense GEMM, highest of the probes interleaved with the rows): {probes or 'none'}.",
            f"Machine: {self.machine['description']}.",
        ]
        problems = [row.roof_problem for row in self.rows if row.roof_problem]
        if problems:
            lines += ["", *(f"- probe problem: {problem}" for problem in problems)]
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        for profile in self.profiles:
            lines += ["", profile.to_markdown()]
        return "\n".join(lines)

    def to_text(self) -> str:
        return self.to_markdown()


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


def _torch_probe(kind: str, threads: int | None, seconds: float) -> float:
    return torch_gemm_probe(kind, threads, seconds)


def cpu_roof_probes(kinds: Sequence[str], units: Any = None) -> dict[str, list[RoofProbe]]:
    """The probes for each roof kind this CPU can run, labelled with the ISA each runs on.

    ``units``: the :class:`~sedeploy.host.MatrixUnits` to plan for (default this CPU's). FP32 and INT8 through
    ONNX Runtime's MLAS (its AMX kernel since 1.14, else VNNI); INT8 also through oneDNN, capped by
    ``ONEDNN_MAX_CPU_ISA``; BF16 and FP16 through oneDNN only where those units exist (else no such roof).
    """
    units = units if units is not None else matrix_units()
    capped = onednn_units(units)
    probes: dict[str, list[RoofProbe]] = {}
    for kind in kinds:
        if kind == "fp32":
            probes[kind] = [
                RoofProbe(
                    kind,
                    "ONNX Runtime MLAS fp32",
                    units.best("fp32") or "scalar",
                    lambda threads, seconds: gemm_probe("fp32", threads, seconds),
                )
            ]
        elif kind == "int8":
            probes[kind] = [
                RoofProbe(
                    kind,
                    "ONNX Runtime MLAS u8s8",
                    units.best("int8") or units.best("fp32") or "scalar",
                    lambda threads, seconds: gemm_probe("int8", threads, seconds),
                ),
                RoofProbe(
                    kind,
                    "oneDNN s8s8 (torch._int_mm)",
                    capped.best("int8") or capped.best("fp32") or "scalar",
                    lambda threads, seconds: torch_gemm_probe("int8", threads, seconds),
                ),
            ]
        elif kind in ("bf16", "fp16") and capped.best(kind) is not None:
            probes[kind] = [
                RoofProbe(
                    kind,
                    f"oneDNN {kind} (torch matmul)",
                    str(capped.best(kind)),
                    functools.partial(_torch_probe, kind),
                )
            ]
    return probes


def gpu_peak_gflops(gpu_name: str, precision: str) -> float | None:
    """Published dense peak of a known GPU model in GFLOP/s (GOP/s for INT8), or None if not in the table."""
    for pattern, peaks in GPU_PEAK_TFLOPS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return peaks.get(precision, peaks["fp32"]) * 1e3
    return None


@dataclass(frozen=True)
class Candidate:
    """Something to bench that is not just a file: a label for the report and how to open it.

    ``open(threads)`` returns the runner; ``precision`` is given (a file's is
    detected from its manifest or graph). ``path`` is what the report names as
    the artifact. :func:`compare` uses it for the PyTorch eager model.
    """

    path: str
    label: str
    open: Callable[[int | None], Runner]
    precision: str | None = None


@dataclass
class _Target:
    path: str
    label: str
    runner: Runner
    precision: str
    backend: str
    gmacs: float
    gpu_name: str | None = None
    on_cpu: bool = True
    """False for a runner on a GPU whose model is unknown (ONNX Runtime's CUDA provider): no roof, not the CPU's."""
    roof_kind: str | None = None
    """The CPU roof that divides it (:func:`roof_kind`)."""


_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _open_target(
    artifact: str | os.PathLike[str] | Candidate, loader: Callable[..., Runner], threads: int | None
) -> _Target:
    from sedeploy.artifacts.precision import (
        detect_precision,  # the one precision rule: manifest, else the graph
    )

    if isinstance(artifact, Candidate):
        runner = artifact.open(threads)
        path, label = artifact.path, artifact.label
        precision = artifact.precision or "fp32"
    else:
        path = str(artifact)
        label = Path(path).name
        precision = detect_precision(path)
        runner = loader(path, threads=threads) if threads and _takes_threads(path) else loader(path)
        # A PyTorch runner computes in its own precision (fp16/bf16 on a GPU): that is the peak it is held to.
        if runner.backend == "torch":
            precision = str(getattr(runner, "precision", None) or precision)
    macs = runner.metadata.macs if runner.metadata is not None else 0
    gpu_name = getattr(runner, "gpu_name", None)
    on_cpu = gpu_name is None and getattr(runner, "provider", None) not in _GPU_PROVIDERS
    kind = roof_kind(precision, getattr(runner, "float_type", None))
    return _Target(path, label, runner, precision, runner.backend, macs / 1e9, gpu_name, on_cpu, kind)


def _takes_threads(path: str) -> bool:
    from sedeploy.artifacts.naming import artifact_backend

    return artifact_backend(path) in ("onnxruntime", "openvino")


DEFAULT_PAUSE_S = 0.05
"""Pause after each sample: ONNX Runtime's (and OpenMP's) worker threads keep spinning briefly after a
run; letting them park keeps the next artifact from being slowed by the previous one (FACTS.md,
"benchmark trap"; benchmarks/results/bench_spin_check.md measures it)."""


def _compute_timer(runner: Runner) -> Callable[[int, int], list[float]] | None:
    """The runner's ``time_compute(batch, iterations) -> seconds per call`` if it has one (TensorRT)."""
    timer = getattr(runner, "time_compute", None)
    return timer if callable(timer) else None


def bench(
    artifacts: Sequence[str | os.PathLike[str] | Candidate],
    batches: Sequence[int] = DEFAULT_BATCHES,
    *,
    warmup: int = 3,
    iterations: int | None = None,
    duration: float | None = 2.0,
    rounds: int = 3,
    threads: int | None = None,
    probe_seconds: float = 1.0,
    loader: Callable[..., Runner] | None = None,
    progress: bool = False,
    profile: bool = False,
    profile_runs: int = 20,
    notes: Sequence[str] = (),
    pause: float = DEFAULT_PAUSE_S,
) -> BenchReport:
    """Benchmark every artifact at every batch size, interleaved over ``rounds`` rounds.

    Each round runs, per artifact and batch, either ``iterations`` calls or for
    ``duration / rounds`` seconds; statistics pool all rounds. ``loader`` opens an
    artifact path as a :class:`Runner` (default :func:`sedeploy.runtime.load`); a
    :class:`Candidate` opens itself. A runner with ``time_compute`` (TensorRT) is
    also timed on the engine alone, as many calls as its end-to-end sample, right
    after it. ``profile``: afterwards, ONNX Runtime's per-op profile of each ONNX
    artifact at each batch size over ``profile_runs`` calls (after the timings, so
    it does not disturb them). ``notes`` are carried into the report. ``pause``:
    seconds of idle after each sample (see :data:`DEFAULT_PAUSE_S`).
    """
    if not artifacts:
        raise ConfigError("give at least one artifact to bench")
    if not batches or min(batches) < 1:
        raise ConfigError(f"batch sizes must be positive integers, got {list(batches)}")
    if iterations is None and (duration is None or duration <= 0):
        raise ConfigError("give iterations N or a positive duration S", params=("iterations", "duration"))
    if rounds < 1 or warmup < 0:
        raise ConfigError("rounds must be >= 1 and warmup >= 0")
    if profile and profile_runs < 1:
        raise ConfigError(f"profile runs must be >= 1, got {profile_runs}")
    if loader is None:
        from sedeploy.runtime import load as loader_function

        loader = loader_function
    targets: list[_Target] = []
    try:
        for artifact in artifacts:
            targets.append(_open_target(artifact, loader, threads))
        plan = cpu_roof_probes(sorted({t.roof_kind for t in targets if t.on_cpu and t.roof_kind}))
        probe_runs: dict[str, list[float]] = {kind: [] for kind in plan}
        probe_best: dict[str, str] = {}
        _run_roof_probes(plan, threads, probe_seconds, probe_runs, probe_best)
        times: dict[tuple[int, int], list[float]] = {}
        compute_times: dict[tuple[int, int], list[float]] = {}
        steps = rounds * len(targets) * len(batches)
        bar = _progress_bar(steps, progress)
        rng = np.random.default_rng(0)
        for _ in range(rounds):
            for batch in batches:
                for index, target in enumerate(targets):
                    spec = target.runner.input_spec
                    shape = (batch, *(dim or 1 for dim in spec.shape[1:]))
                    feed = rng.standard_normal(shape).astype(spec.dtype)
                    for _ in range(warmup):
                        target.runner(feed)
                    samples = times.setdefault((index, batch), [])
                    budget = None if iterations is not None else (duration or 0) / rounds
                    started = time.perf_counter()
                    calls = 0
                    while (iterations is not None and calls < iterations) or (
                        budget is not None and (time.perf_counter() - started < budget or calls == 0)
                    ):
                        call_started = time.perf_counter()
                        target.runner(feed)
                        samples.append(time.perf_counter() - call_started)
                        calls += 1
                    timer = _compute_timer(target.runner)
                    if timer is not None:
                        compute_times.setdefault((index, batch), []).extend(timer(batch, calls))
                    time.sleep(pause)
                    if bar is not None:
                        bar.update(1)
            # The roof is the best the machine showed, probed between the rounds it divides.
            _run_roof_probes(plan, threads, probe_seconds, probe_runs, probe_best)
        if bar is not None:
            bar.close()
        probes = {kind: max(figures) for kind, figures in probe_runs.items() if figures}
        rows = []
        for batch in batches:
            first_rate = None
            for index, target in enumerate(targets):
                stats = LatencyStats.from_times(times[(index, batch)], batch)
                compute = compute_times.get((index, batch))
                first_rate = first_rate or stats.images_per_s
                rows.append(
                    BenchRow(
                        artifact=target.path,
                        label=target.label,
                        precision=target.precision,
                        backend=target.backend,
                        stats=stats,
                        gmacs_per_image=target.gmacs,
                        roof_gflops=_roof_for(target, probes),
                        ratio_to_first=stats.images_per_s / first_rate if first_rate else None,
                        compute=LatencyStats.from_times(compute, batch) if compute else None,
                        roof_kind=target.precision if target.gpu_name else target.roof_kind,
                    )
                )
    finally:
        for target in targets:
            target.runner.close()
    profiles = _profiles(targets, batches, threads, profile_runs, pause) if profile else ()
    settings = {
        "batches": list(batches),
        "warmup": warmup,
        "iterations": iterations,
        "duration_s": duration if iterations is None else None,
        "rounds": rounds,
        "threads": threads,
        "profile_runs": profile_runs if profile else None,
        "pause_s": pause,
        "roof_probe_runs_gflops": probe_runs,
    }
    report = BenchReport(
        tuple(rows), probes, describe_machine(), settings, profiles, tuple(notes), probe_labels=probe_best
    )
    for row in report.rows:
        if row.roof_problem:
            logger.warning("probe problem: %s", row.roof_problem)
    return report


def _profiles(
    targets: Sequence[_Target], batches: Sequence[int], threads: int | None, runs: int, pause: float
) -> tuple[OpProfile, ...]:
    from sedeploy.backends.onnxruntime import profile_ops

    profiles = []
    rng = np.random.default_rng(0)
    for target in targets:
        if target.backend != "onnxruntime" or not target.path.endswith(".onnx"):
            logger.info("no per-op profile for %s: only ONNX Runtime artifacts are profiled", target.path)
            continue
        spec = target.runner.input_spec
        for batch in batches:
            feed = rng.standard_normal((batch, *(dim or 1 for dim in spec.shape[1:]))).astype(spec.dtype)
            seconds = profile_ops(target.path, feed, runs, threads)
            ops = tuple((op, 1e3 * total / runs) for op, total in seconds.items())
            profiles.append(OpProfile(target.path, target.label, batch, runs, ops))
            time.sleep(pause)
    return tuple(profiles)


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
    if float_type in ("bf16", "f16"):
        return "bf16" if float_type == "bf16" else "fp16"
    if precision == "bf16":
        return "bf16"
    return "fp32"


def _roof_for(target: _Target, probes: dict[str, float]) -> float | None:
    if target.gpu_name is not None:
        return gpu_peak_gflops(target.gpu_name, target.precision)
    if not target.on_cpu:
        return None
    return probes.get(target.roof_kind or "fp32")


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from sedeploy.progress import progress_bar

    return progress_bar(total=total, desc="bench", unit="sample")


def write_reports(
    report: BenchReport,
    json_path: Path | None = None,
    markdown_path: Path | None = None,
    plot_path: Path | None = None,
) -> None:
    """Write the report as JSON, Markdown and a PNG plot of images/s vs batch size, each atomically."""
    if json_path is not None:
        write_json_atomic(json_path, report.to_dict())
    if markdown_path is not None:
        with atomic_output(markdown_path) as temp_path:
            temp_path.write_text(report.to_markdown() + "\n", encoding="utf-8")
    if plot_path is not None:
        plot_throughput(report, plot_path)


def new_figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib Figure with its own Agg canvas (no pyplot: the user's backend is left alone) and its axes."""
    import_optional("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def save_figure(figure: Any, axes: Any, title: str, path: Path, legend_size: int = 8) -> Path:
    """Grid, legend and title on ``axes``, then ``figure`` written to ``path`` as PNG, atomically."""
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=legend_size)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    with atomic_output(path) as temp_path:
        figure.savefig(temp_path, format="png")
    return path


def plot_throughput(report: BenchReport, path: Path) -> Path:
    """PNG of images/s against batch size, one line per artifact."""
    figure, axes = new_figure((7, 4.5))
    for label in dict.fromkeys(row.label for row in report.rows):
        points = sorted(
            (row.stats.batch, row.stats.images_per_s) for row in report.rows if row.label == label
        )
        axes.plot([b for b, _ in points], [r for _, r in points], marker="o", label=label)
    axes.set_xlabel("batch size")
    axes.set_ylabel("images / s")
    axes.set_xscale("log", base=2)
    return save_figure(figure, axes, f"sedeploy bench - {report.machine['cpu']}", path)
