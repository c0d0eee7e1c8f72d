"""Throughput and latency of runners against their GFLOPs and the machine's own roof: ``bench``.

Per artifact and batch size: images/s, latency mean/p50/p90/p99, the model's GMACs and GFLOPs per image (from
its ONNX metadata, i.e. the one estimator in :mod:`sedeploy.models.complexity`), achieved GFLOP/s and the share
of the device's roof (:mod:`sedeploy.measure.roofs`, probed before the timings and after every round,
interleaved with the rows it divides, keeping the highest figure). A share above 100% means the probe
under-measured: it is reported as a probe problem, never as a figure. Several artifacts are timed interleaved
by the one loop (:func:`sedeploy.measure.timing.time_interleaved`) so a noisy machine affects all alike.
Runners that can time their compute alone (TensorRT, with CUDA events) add compute-only columns, so the
host<->device copy cost shows as the difference.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy._version import __version__
from sedeploy.backends.base import Runner
from sedeploy.errors import ConfigError
from sedeploy.host import describe_machine
from sedeploy.measure.roofs import (
    _run_roof_probes,
    cpu_roof_probes,
    gpu_peak_gflops,
    roof_kind,
)
from sedeploy.measure.timing import DEFAULT_PAUSE_S, LatencyStats, time_interleaved

logger = logging.getLogger(__name__)

DEFAULT_BATCHES = (1, 8)
ROOF_WARNING_SHARE = 1.0
"""A share of roof above this means the probe under-measured the machine; it is flagged, not hidden."""


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
        bar = _progress_bar(rounds * len(targets) * len(batches), progress)
        timings = time_interleaved(
            {index: target.runner for index, target in enumerate(targets)},
            batches,
            rounds=rounds,
            warmup=warmup,
            iterations=iterations,
            seconds=duration,
            pause=pause,
            after_sample=bar.update if bar is not None else None,
            # The roof is the best the machine showed, probed between the rounds it divides.
            after_round=lambda: _run_roof_probes(plan, threads, probe_seconds, probe_runs, probe_best),
        )
        times, compute_times = timings.calls, timings.compute
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
