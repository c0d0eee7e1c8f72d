"""``sedeploy bench``: throughput and latency of artifacts against their GFLOPs and the machine's own roof.

The measuring is :func:`sedeploy.measure.bench.bench` (one timing loop, roofs probed interleaved); this command
adds the reports (JSON, Markdown, PNG) and ``--compare``: from one exported FP32 ONNX it finds (the one reuse
rule, :mod:`sedeploy.measure.reuse`) or builds the FP16 and INT8 artifacts (and TensorRT engines where TensorRT
and a GPU are present) and benches them against PyTorch eager.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedeploy.artifacts.naming import artifact_path, precision_suffix
from sedeploy.backends.base import Runner
from sedeploy.errors import ConfigError
from sedeploy.files import atomic_output, write_json_atomic
from sedeploy.measure.bench import (
    DEFAULT_BATCHES,
    BenchReport,
    BenchRow,
    Candidate,
    OpProfile,
    bench,
)
from sedeploy.measure.reuse import reuse_problem
from sedeploy.measure.roofs import cpu_roof_probes, gemm_probe, roof_kind, torch_gemm_probe
from sedeploy.measure.timing import LatencyStats
from sedeploy.plots import new_figure, save_figure
from sedeploy.progress import progress_bar

__all__ = [
    "DEFAULT_BATCHES",
    "BenchReport",
    "BenchRow",
    "Candidate",
    "CompareBuild",
    "LatencyStats",
    "OpProfile",
    "bench",
    "compare",
    "cpu_roof_probes",
    "gemm_probe",
    "plot_throughput",
    "prepare_compare",
    "roof_kind",
    "torch_candidate",
    "torch_gemm_probe",
    "write_reports",
]

logger = logging.getLogger(__name__)


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
    batches = sorted({row.stats.batch for row in report.rows})
    axes.set_xticks(batches, [str(batch) for batch in batches])  # 1, 2, 4, 8: not 2^0 ... 2^3
    axes.minorticks_off()
    title = f"sedeploy bench - {report.machine['cpu']}" + (
        f"\n{report.machine['isa']}" if report.machine.get("isa") else ""
    )
    return save_figure(figure, axes, title, path)


@dataclass(frozen=True)
class CompareBuild:
    """One artifact ``compare`` benches: what it is, where it is, and whether it was reused or built now."""

    backend: str
    precision: str
    flavour: str | None
    artifact: Path
    reused: bool
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.backend} {precision_suffix(self.precision, self.flavour)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "flavour": self.flavour,
            "artifact": str(self.artifact),
            "reused": self.reused,
            "seconds": round(self.seconds, 3),
        }


COMPARE_PLAN: tuple[tuple[str, str, str | None], ...] = (
    ("onnxruntime", "fp32", None),
    ("onnxruntime", "fp16", None),
    ("onnxruntime", "int8", "cpu"),
)
"""(backend, precision, INT8 flavour) that ``--compare`` always benches."""
TENSORRT_COMPARE_PLAN: tuple[tuple[str, str, str | None], ...] = (
    ("tensorrt", "fp16", None),
    ("tensorrt", "int8", "tensorrt"),
)
"""Added when TensorRT and an NVIDIA GPU are present."""
OPENVINO_COMPARE_PLAN: tuple[tuple[str, str, str | None], ...] = (("openvino", "int8", None),)
"""Added on request (``openvino=True``): NNCF's INT8 IR."""
_ONNX_RECIPE_OPTIONS = frozenset({"calib_method", "percentile", "quantize_se", "target"})
"""Build options that shape the ONNX Q/DQ recipe, which OpenVINO's NNCF build refuses."""


def prepare_compare(
    model_path: str | os.PathLike[str],
    *,
    calibration: str | os.PathLike[str] | None = None,
    calib_size: int | None = None,
    tensorrt: bool | None = None,
    openvino: bool = False,
    build_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> tuple[list[CompareBuild], list[str]]:
    """Find or build, beside ``model_path``, every artifact ``--compare`` benches; return them and notes.

    ``model_path`` is an exported FP32 ONNX with sedeploy metadata. ONNX Runtime
    FP32, FP16 and INT8 (cpu flavour) always; TensorRT FP16 and INT8 when
    ``tensorrt`` is True, or None and TensorRT with a GPU is present; OpenVINO INT8
    when ``openvino``. An artifact is reused when its manifest says it was built
    from this file (sha256) with this precision, flavour and calibration, else it
    is built with :func:`sedeploy.building.build_artifact` (calibration: ``calibration``
    or build-engine's default folder and size). ``build_options`` go to
    :class:`sedeploy.building.BuildOptions` (e.g. ``calib_method``).
    """
    from sedeploy.backends import tensorrt as trt_backend
    from sedeploy.building import DEFAULT_CALIBRATION_SIZE, BuildOptions, build_artifact, read_source

    source = Path(model_path)
    if source.suffix.lower() != ".onnx" or not source.is_file():
        raise ConfigError(f"the comparison takes one exported FP32 .onnx file; {source} is not one")
    model = read_source(source)  # read once: every build below is handed this
    if model.metadata is None:
        raise ConfigError(f"{source} has no sedeploy metadata; export it with `sedeploy export` first")
    source_precision = model.precision
    if source_precision != "fp32":
        raise ConfigError(f"{source} is a {source_precision} file; give the exported FP32 ONNX")
    size = calib_size or DEFAULT_CALIBRATION_SIZE
    calib_dir = Path(calibration) if calibration is not None else None
    notes: list[str] = []
    plan = list(COMPARE_PLAN)
    available, reason = trt_backend.availability()
    if tensorrt is None:
        tensorrt = available
        if not available:
            notes.append(f"TensorRT skipped: {reason}")
    elif tensorrt and not available:
        raise ConfigError(f"TensorRT was asked for but cannot run here: {reason}")
    if tensorrt:
        plan += TENSORRT_COMPARE_PLAN
    if openvino:
        plan += OPENVINO_COMPARE_PLAN
    source_sha256 = model.sha256
    builds = []
    bar = progress_bar(plan, desc="compare", unit="build", enabled=progress)
    for backend, precision, flavour in bar:
        artifact = artifact_path(source, backend, precision, flavour)
        extra = {
            key: value
            for key, value in (build_options or {}).items()
            if backend != "openvino" or key not in _ONNX_RECIPE_OPTIONS
        }
        options = BuildOptions(
            precision=precision,
            backend=backend,
            target=flavour,
            calib_dir=calib_dir if precision == "int8" else None,
            calib_size=size,
            **extra,
        )
        wanted = options.to_dict()
        problem = reuse_problem(
            artifact,
            source_sha256,
            backend,
            precision,
            flavour,
            calib_dir,
            size,
            {key: wanted.get(key) for key in extra},
        )
        if problem is None:
            logger.info("reusing %s", artifact)
            builds.append(CompareBuild(backend, precision, flavour, artifact, reused=True))
            continue
        bar.set_description(f"compare: build {backend} {precision}")
        logger.info("building %s (%s)", artifact, problem)
        result = build_artifact(model, options, progress=progress)
        builds.append(
            CompareBuild(backend, precision, flavour, artifact, reused=False, seconds=result.seconds)
        )
    bar.close()
    return builds, notes


def torch_candidate(
    model_path: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    device: str | None = None,
) -> Candidate:
    """PyTorch eager FP32 of the model an exported ONNX describes (arch and options from its metadata).

    The ONNX does not carry PyTorch's weights, so without ``weights`` (the file it
    was exported from) the model has random weights: the same shapes and
    operations, hence the same speed, but not the same outputs.
    """
    from sedeploy.artifacts.metadata import read_metadata

    metadata = read_metadata(model_path)
    source = str(weights) if weights is not None else metadata.arch

    def open_torch(threads: int | None) -> Runner:
        from sedeploy.optional import import_optional

        torch = import_optional("torch")  # one line naming the extra where PyTorch is not installed
        from sedeploy.backends.torch import TorchRunner

        if threads:
            torch.set_num_threads(threads)  # PyTorch's intra-op pool is per process
        return TorchRunner(source, metadata=metadata, device=device, random_weights=weights is None)

    return Candidate(
        path=str(weights) if weights is not None else f"torch:{metadata.arch}",
        label="PyTorch eager FP32" + ("" if weights is not None else " (random weights)"),
        open=open_torch,
        precision="fp32",
    )


def compare(
    model_path: str | os.PathLike[str],
    batches: Sequence[int] = DEFAULT_BATCHES,
    *,
    calibration: str | os.PathLike[str] | None = None,
    calib_size: int | None = None,
    tensorrt: bool | None = None,
    openvino: bool = False,
    build_options: dict[str, Any] | None = None,
    torch_weights: str | os.PathLike[str] | None = None,
    progress: bool = False,
    **bench_options: Any,
) -> BenchReport:
    """``sedeploy bench MODEL.onnx --compare``: :func:`prepare_compare`, then :func:`bench` with PyTorch first.

    Rows are PyTorch eager FP32 (``torch_weights``, else random weights), then
    every artifact, so ``ratio_to_first`` reads "x eager". ``bench_options`` go
    to :func:`bench`.
    """
    builds, notes = prepare_compare(
        model_path,
        calibration=calibration,
        calib_size=calib_size,
        tensorrt=tensorrt,
        openvino=openvino,
        build_options=build_options,
        progress=progress,
    )
    built = [build for build in builds if not build.reused]
    if built:
        notes.append(
            "built now: " + ", ".join(f"{build.artifact.name} ({build.seconds:.0f} s)" for build in built)
        )
    reused = [build.artifact.name for build in builds if build.reused]
    if reused:
        notes.append("reused (manifest matches the source): " + ", ".join(reused))
    if torch_weights is None:
        notes.append("PyTorch eager runs the same architecture with random weights: speed only, not outputs")
    artifacts: list[str | os.PathLike[str] | Candidate] = [torch_candidate(model_path, torch_weights)]
    artifacts += [build.artifact for build in builds]
    return bench(artifacts, batches, progress=progress, notes=notes, **bench_options)
