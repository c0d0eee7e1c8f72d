"""``sedeploy demo``: the whole pipeline on the shipped digits SE-ResNet, end to end, in one call.

The shipped checkpoint (``models/digits_se_resnet/``) is exported with its labels,
turned into FP16 and both INT8 flavours (calibrated on ``calibration/``), built
for every backend present (ONNX Runtime; TensorRT too when it and a GPU are
there), verified against the PyTorch model on the held-out images and
benchmarked at batch 1 and 8, then ``sedeploy optimize`` searches every candidate
for the fastest within the accuracy budget and keeps it. SE-ResNet-50 at 224 with
random weights is exported, built and benchmarked beside it for speed only. Everything lands in
one folder: the artifacts under ``artifacts/``, ``report.md``, ``report.json``
and the bench plots. Each step is a call into the library functions the
individual commands use; this module only chains them and tabulates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from sedeploy._version import __version__
from sedeploy.artifacts.metadata import load_onnx
from sedeploy.artifacts.naming import precision_suffix
from sedeploy.bench import BenchReport, bench, write_reports
from sedeploy.build import BuildOptions, build_engine, choose_backend
from sedeploy.errors import BadInputError, MissingDependencyError
from sedeploy.files import atomic_output, check_writable, write_json_atomic
from sedeploy.host import describe_machine
from sedeploy.optimize import OptimizeReport, optimize
from sedeploy.optional import import_optional
from sedeploy.progress import progress_bar
from sedeploy.verify import VerifyReport, verify

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("demo-output")
EXAMPLE_DIR = Path("models") / "digits_se_resnet"
CALIBRATION_DIR = Path("calibration")
EXAMPLE_NAME = "digits_se_resnet"
SPEED_ARCH = "se_resnet50"
SPEED_NAME = "se_resnet50_random"
BATCHES = (1, 8)
REPORT_FORMAT = "sedeploy-demo"
REPORT_VERSION = 1
_SPEED_CALIBRATION = {"calib_size": 16, "calib_method": "minmax", "gate": False}
"""SE-ResNet-50 has random weights, so its INT8 ranges only need to exist: a small, fast calibration, and no
parity gate (random logits say nothing about INT8 fidelity; the digits model is gated as a user's would be)."""


@dataclass(frozen=True)
class DemoSettings:
    """How long the demo spends on each step: the full run or ``--quick``."""

    calib_size: int
    bench_duration: float
    bench_rounds: int
    bench_warmup: int
    probe_seconds: float
    speed_model: bool
    speed_duration: float = 4.0
    speed_rounds: int = 2
    optimize_seconds: float = 1.0
    """``sedeploy optimize`` at the end: timed seconds per candidate (over ``optimize_rounds`` rounds)."""
    optimize_rounds: int = 2


FULL = DemoSettings(
    calib_size=300, bench_duration=2.0, bench_rounds=3, bench_warmup=3, probe_seconds=1.0, speed_model=True
)
QUICK = DemoSettings(
    calib_size=100,
    bench_duration=0.6,
    bench_rounds=2,
    bench_warmup=2,
    probe_seconds=0.3,
    speed_model=False,
    optimize_seconds=0.3,
    optimize_rounds=1,
)


@dataclass(frozen=True)
class Example:
    """The shipped example's files."""

    weights: Path
    labels: Path
    heldout: Path
    calibration: Path
    arch: str
    img_size: tuple[int, int]


def find_example(root: str | os.PathLike[str] | None = None) -> Example:
    """The shipped example under ``root``, else the current folder, else the clone sedeploy runs from."""
    candidates = [Path(root)] if root is not None else [Path.cwd(), Path(__file__).resolve().parents[1]]
    for base in candidates:
        folder = base / EXAMPLE_DIR
        if (folder / "model.json").is_file() and (base / CALIBRATION_DIR).is_dir():
            record = json.loads((folder / "model.json").read_text(encoding="utf-8"))
            _, height, width = record["input_size"]
            return Example(
                weights=folder / record.get("checkpoint", "model.safetensors"),
                labels=folder / "labels.txt",
                heldout=folder / "heldout",
                calibration=base / CALIBRATION_DIR,
                arch=record["arch"],
                img_size=(int(height), int(width)),
            )
    searched = " or ".join(str(base) for base in candidates)
    raise BadInputError(
        f"the demo's example ({EXAMPLE_DIR}/ and {CALIBRATION_DIR}/) is not in {searched}; "
        "run it from a clone of the sedeploy repository"
    )


@dataclass(frozen=True)
class DemoRow:
    """One artifact in the summary: what it is, how faithful it is and how fast it runs.

    Accuracies and agreement are fractions, ``accuracy_drop`` is in percentage
    points; figures a row did not measure are None (speed-only rows have no accuracy).
    """

    model: str
    artifact: str
    backend: str
    precision: str
    flavour: str | None
    size_mb: float
    speed_only: bool
    accuracy: float | None = None
    accuracy_drop: float | None = None
    top1_agreement: float | None = None
    min_cosine: float | None = None
    verified: bool | None = None
    images_per_s: dict[int, float] = field(default_factory=dict)
    gflops: float | None = None
    roof_share: float | None = None

    @property
    def precision_label(self) -> str:
        return f"{self.precision}-{self.flavour}" if self.flavour else self.precision

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "artifact": self.artifact,
            "backend": self.backend,
            "precision": self.precision,
            "flavour": self.flavour,
            "size_mb": round(self.size_mb, 3),
            "speed_only": self.speed_only,
            "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop,
            "top1_agreement": self.top1_agreement,
            "min_cosine": self.min_cosine,
            "verified": self.verified,
            "images_per_s": {str(batch): rate for batch, rate in self.images_per_s.items()},
            "gflops_at_batch": max(self.images_per_s) if self.images_per_s else None,
            "gflops": self.gflops,
            "roof_share": self.roof_share,
        }


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass(frozen=True)
class DemoReport:
    """Everything one demo run produced: the summary rows, the full verify and bench reports, and the files."""

    out_dir: Path
    quick: bool
    rows: tuple[DemoRow, ...]
    verifications: tuple[VerifyReport, ...]
    benches: tuple[BenchReport, ...]
    backends: dict[str, str]
    notes: tuple[str, ...]
    stage_seconds: dict[str, float]
    seconds: float
    files: tuple[Path, ...] = ()
    optimized: OptimizeReport | None = None
    """The closing ``optimize`` search on the digits model: every candidate and the one kept."""

    @property
    def passed(self) -> bool:
        """Every verified artifact passed its precision's thresholds, and the search kept an artifact."""
        return all(report.passed for report in self.verifications) and (
            self.optimized is None or self.optimized.passed
        )

    @property
    def machine(self) -> str:
        return self.benches[0].machine["description"] if self.benches else ""

    def table(self) -> str:
        """The summary as a Markdown table."""
        lines = [
            "| artifact | backend | precision | size MB | accuracy | drop pp | top-1 agreement | min cosine "
            f"| img/s b{BATCHES[0]} | img/s b{BATCHES[-1]} | GFLOP/s b{BATCHES[-1]} | share of roof b{BATCHES[-1]} |",
            "|" + "---|" * 12,
        ]
        for row in self.rows:
            accuracy = "speed only, random weights" if row.speed_only else _percent(row.accuracy)
            if row.verified is False:
                accuracy += " (FAIL)"
            lines.append(
                f"| {row.artifact} | {row.backend} | {row.precision_label} | {row.size_mb:.2f} | {accuracy} "
                f"| {_number(row.accuracy_drop, '+.2f')} | {_percent(row.top1_agreement)} "
                f"| {_number(row.min_cosine, '.6f')} | {_number(row.images_per_s.get(BATCHES[0]), '.1f')} "
                f"| {_number(row.images_per_s.get(BATCHES[-1]), '.1f')} | {_number(row.gflops, '.1f')} "
                f"| {_percent(row.roof_share, 1)} |"
            )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """``report.md``: the table, the notes, then every verify and bench report in full."""
        mode = "quick" if self.quick else "full"
        lines = [
            f"# sedeploy demo ({mode} run)",
            "",
            f"sedeploy {__version__}; {self.machine}; {self.seconds:.0f} s in all.",
            "",
            self.table(),
            "",
            "Accuracy, drop and agreement: each artifact against the PyTorch model on the held-out digits; "
            "drop in percentage points (negative: the artifact scored higher). "
            f"GFLOP/s and share of roof at batch {BATCHES[-1]}; the roof is measured in the same run.",
            "",
            *[f"- {note}" for note in self.notes],
            "",
            "## Verification",
            "",
        ]
        for verification in self.verifications:
            lines += ["```", verification.to_text(), "```", ""]
        lines += ["## Benchmarks", ""]
        for benchmark in self.benches:
            lines += [benchmark.to_markdown(), ""]
        if self.optimized is not None:
            lines += [
                "## Optimize: the fastest artifact within the budget, measured here",
                "",
                f"`sedeploy optimize` on {EXAMPLE_NAME}.onnx with the held-out digits; kept "
                f"`{self.optimized.best.name if self.optimized.best else 'nothing'}`.",
                "",
                self.optimized.search.to_markdown(),
            ]
        lines += ["## Time per step", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in self.stage_seconds.items()]
        return relative_to_folder("\n".join(lines) + "\n", self.out_dir)

    def to_text(self) -> str:
        """For the terminal: the table, the notes, the verdict and where the reports are."""
        lines = [self.table(), "", *self.notes, ""]
        if self.optimized is not None:
            lines += [
                f"optimize {EXAMPLE_NAME}: every candidate, measured here",
                self.optimized.search.to_text(),
                "",
            ]
        failed = [report.artifact for report in self.verifications if not report.passed]
        if failed:
            lines.append("FAIL: " + ", ".join(failed) + " (see report.md)")
        else:
            lines.append(f"all {len(self.verifications)} artifacts verified")
        if self.optimized is not None and self.optimized.best is not None:
            lines.append(f"kept {self.optimized.best} (sedeploy.load opens it as measured)")
        lines.append(
            f"done in {self.seconds:.0f} s; reports in {self.out_dir}: "
            + ", ".join(path.name for path in self.files)
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """``report.json`` (and ``demo --json``): paths relative to the output folder."""
        return relative_to_folder(self._fields(), self.out_dir)

    def _fields(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "format_version": REPORT_VERSION,
            "sedeploy_version": __version__,
            "quick": self.quick,
            "passed": self.passed,
            "out_dir": str(self.out_dir),
            "backends": self.backends,
            "machine": self.benches[0].machine if self.benches else {},
            "rows": [row.to_dict() for row in self.rows],
            "notes": list(self.notes),
            "verify": [report.to_dict() for report in self.verifications],
            "bench": [report.to_dict() for report in self.benches],
            "optimize": self.optimized.to_dict() if self.optimized is not None else None,
            "stage_seconds": {name: round(seconds, 3) for name, seconds in self.stage_seconds.items()},
            "seconds": round(self.seconds, 3),
            "files": [str(path) for path in self.files],
        }


def _from_here(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it is under it (a command a user can paste)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def relative_to_folder(value: Any, folder: Path) -> Any:
    """``value`` (text, or JSON-ready lists and dicts) with absolute paths inside ``folder`` and under the working
    directory written relative to ``folder``: a report names no machine's absolute paths."""
    if isinstance(value, str):
        inside = str(folder.resolve()) + os.sep
        here = str(Path.cwd().resolve()) + os.sep
        up = (
            os.path.relpath(Path.cwd().resolve(), folder.resolve()) + os.sep
        )  # the working directory, from folder
        for prefix, replacement in sorted(
            {inside: "", str(folder) + os.sep: "", here: "" if up == "." + os.sep else up}.items(),
            key=lambda item: -len(item[0]),
        ):
            if prefix != os.sep:
                value = value.replace(prefix, replacement)
        return value
    if isinstance(value, dict):
        return {key: relative_to_folder(item, folder) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_to_folder(item, folder) for item in value]
    return value


_EXAMPLE_PLAN: dict[str, tuple[tuple[str, str | None], ...]] = {
    "onnxruntime": (("fp32", None), ("fp16", None), ("int8", "tensorrt"), ("int8", "cpu")),
    "tensorrt": (("fp32", None), ("fp16", None), ("int8", "tensorrt")),
}
"""Per backend, the (precision, INT8 flavour) builds of the example: both INT8 flavours where they can run."""
_SPEED_PLAN: dict[str, tuple[tuple[str, str | None], ...]] = {
    "onnxruntime": (("fp32", None), ("int8", "cpu")),
    "tensorrt": (("fp32", None), ("fp16", None), ("int8", "tensorrt")),
}
"""Per backend, the builds of SE-ResNet-50 for speed: what each backend runs fastest."""


@dataclass(frozen=True)
class _Build:
    model: str
    backend: str
    precision: str
    flavour: str | None
    artifact: Path
    precision_file: Path


class _Stages:
    """One progress bar over the demo's steps (inner steps show their own bars) and the time of each step."""

    def __init__(self, total: int, progress: bool) -> None:
        self._bar = progress_bar(total=total, desc="demo", unit="step", enabled=progress)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._bar.set_description(f"demo: {name}")
        logger.info("demo: %s", name)
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _build(
    source: Path,
    model: str,
    backend: str,
    precision: str,
    flavour: str | None,
    calibration: Path,
    calibration_options: dict[str, Any],
    progress: bool,
) -> _Build:
    options = BuildOptions(
        precision=precision,
        backend=backend,
        target=flavour,
        calib_dir=calibration if precision == "int8" else None,
        **calibration_options,
    )
    result = build_engine(source, options, progress=progress)
    # artifacts: [precision ONNX, ONNX Runtime's optimized graph] or [TensorRT engine]; the last one runs
    return _Build(model, backend, precision, flavour, result.artifacts[-1], result.artifacts[0])


def _fp16_note(builds: Sequence[_Build]) -> str | None:
    """Say so when ONNX Runtime's optimizer turned an FP16 graph back into FP32 (CPUs have no FP16 kernels)."""
    for build in builds:
        if build.backend != "onnxruntime" or build.precision != "fp16":
            continue
        graph = load_onnx(build.artifact).graph
        if not any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer):
            return (
                f"{build.artifact.name}: ONNX Runtime has no FP16 kernels on this device, so its optimizer "
                "folded the graph back to FP32 (FP32 size and speed); the portable FP16 file is "
                f"{build.precision_file.name} ({build.precision_file.stat().st_size / 1e6:.2f} MB)."
            )
    return None


def _row(build: _Build, verification: VerifyReport | None, benches: Sequence[BenchReport]) -> DemoRow:
    rates, gflops, share = {}, None, None
    for report in benches:
        for bench_row in report.rows:
            if bench_row.artifact == str(build.artifact):
                rates[bench_row.stats.batch] = bench_row.stats.images_per_s
                if bench_row.stats.batch == max(BATCHES):
                    gflops, share = bench_row.achieved_gflops, bench_row.roof_share
    figures: dict[str, Any] = {}
    if verification is not None:
        figures = {
            "accuracy": verification.artifact_accuracy,
            "accuracy_drop": verification.accuracy_drop,
            "top1_agreement": verification.comparison.top1_agreement,
            "min_cosine": verification.comparison.min_cosine,
            "verified": verification.passed,
        }
    return DemoRow(
        model=build.model,
        artifact=build.artifact.name,
        backend=build.backend,
        precision=build.precision,
        flavour=build.flavour,
        size_mb=build.artifact.stat().st_size / 1e6,
        speed_only=verification is None,
        images_per_s=rates,
        gflops=gflops,
        roof_share=share,
        **figures,
    )


def _reference_row(example: Example, verification: VerifyReport | None) -> DemoRow:
    return DemoRow(
        model=EXAMPLE_NAME,
        artifact=f"{example.weights.name} (PyTorch reference)",
        backend="torch",
        precision="fp32",
        flavour=None,
        size_mb=example.weights.stat().st_size / 1e6,
        speed_only=False,
        accuracy=verification.reference_accuracy if verification else None,
    )


def _notes(backends: dict[str, str], tensorrt_reason: str, settings: DemoSettings, quick: bool) -> list[str]:
    notes = []
    if "tensorrt" not in backends:
        notes.append(f"{tensorrt_reason}. Only ONNX Runtime artifacts were built.")
    notes.append(
        "int8-tensorrt is the signed, symmetric Q/DQ file TensorRT wants; ONNX Runtime runs it slowly on CPUs "
        "(int8-cpu is the file for them), so its speed here says nothing about TensorRT."
    )
    if settings.speed_model:
        notes.append(
            f"{SPEED_NAME}: SE-ResNet-50 at 224x224 with random weights, for speed only (no accuracy); its INT8 "
            f"is calibrated on {_SPEED_CALIBRATION['calib_size']} images with {_SPEED_CALIBRATION['calib_method']}."
        )
    if quick:
        notes.append(
            f"Quick run: {settings.calib_size} calibration images, {settings.bench_duration:g} s per benchmark, "
            "no SE-ResNet-50; run without --quick for steadier speeds."
        )
    load, machine = os.getloadavg()[0], describe_machine()
    notes.append(
        f"1-minute load average {load:.1f} on {machine['logical_cpus']} logical CPUs ({machine['cores']} usable here) "
        "when the demo started"
        + (": other processes shared the CPU, so speeds read low and vary." if load >= 0.5 else ".")
    )
    return notes


def _write_plots(benches: Sequence[BenchReport], out: Path, notes: list[str]) -> list[Path]:
    paths = [out / "bench.png", out / f"bench-{SPEED_ARCH}.png"][: len(benches)]
    try:
        for report, path in zip(benches, paths, strict=False):
            write_reports(report, plot_path=path)
    except MissingDependencyError:
        notes.append("Bench plots skipped: matplotlib is not installed (pip install 'sedeploy[plot]').")
        return []
    return paths


def run_demo(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    quick: bool = False,
    progress: bool = False,
    example_root: str | os.PathLike[str] | None = None,
) -> DemoReport:
    """Run the demo into ``out_dir`` (see the module docstring); ``quick`` takes about a minute on 2 cores.

    Returns the report, whether every artifact verified or not (``report.passed``).
    ``example_root`` is the folder holding ``models/`` and ``calibration/``
    (default: the current folder, else the clone sedeploy runs from).
    """
    started = time.perf_counter()
    # PyTorch (export) is needed from here on, not to import this module (``demo --help`` runs without it)
    export_onnx = import_optional("sedeploy.export").export_onnx
    settings = QUICK if quick else FULL
    out = Path(out_dir)
    check_writable(out / "report.json")
    example = find_example(example_root)
    artifacts_dir = out / "artifacts"
    chosen, tensorrt_reason = choose_backend("auto")
    backends = {"onnxruntime": "always built"}
    if chosen == "tensorrt":
        backends["tensorrt"] = tensorrt_reason
    notes = _notes(backends, tensorrt_reason, settings, quick)
    example_plan = [(backend, *build) for backend in backends for build in _EXAMPLE_PLAN[backend]]
    speed_plan = [(backend, *build) for backend in backends for build in _SPEED_PLAN[backend]]
    steps = 2 + 2 * len(example_plan) + 2 + (2 + len(speed_plan) if settings.speed_model else 0)
    stages = _Stages(steps, progress)
    example_calibration = {"calib_size": settings.calib_size}
    try:
        with stages(f"export {EXAMPLE_NAME}"):
            source = export_onnx(
                example.arch,
                weights=example.weights,
                img_size=example.img_size,
                labels=example.labels,
                output=artifacts_dir / f"{EXAMPLE_NAME}.onnx",
            ).path
        builds = []
        for backend, precision, flavour in example_plan:
            name = precision_suffix(precision, flavour)
            with stages(f"build {name} for {backend}"):
                builds.append(
                    _build(
                        source,
                        EXAMPLE_NAME,
                        backend,
                        precision,
                        flavour,
                        example.calibration,
                        example_calibration,
                        progress,
                    )
                )
        verifications = {}
        for build in builds:
            with stages(f"verify {build.artifact.name}"):
                verifications[build.artifact] = verify(
                    build.artifact, example.weights, data=example.heldout, progress=progress
                )
        speed_builds = []
        if settings.speed_model:
            with stages(f"export {SPEED_ARCH} (random weights)"):
                speed_source = export_onnx(SPEED_ARCH, output=artifacts_dir / f"{SPEED_NAME}.onnx").path
            for backend, precision, flavour in speed_plan:
                name = precision_suffix(precision, flavour)
                with stages(f"build {SPEED_ARCH} {name} for {backend}"):
                    speed_builds.append(
                        _build(
                            speed_source,
                            SPEED_NAME,
                            backend,
                            precision,
                            flavour,
                            example.calibration,
                            _SPEED_CALIBRATION,
                            progress,
                        )
                    )
        with stages(f"bench {EXAMPLE_NAME}"):
            benches = [
                bench(
                    [build.artifact for build in builds],
                    BATCHES,
                    warmup=settings.bench_warmup,
                    duration=settings.bench_duration,
                    rounds=settings.bench_rounds,
                    probe_seconds=settings.probe_seconds,
                    progress=progress,
                )
            ]
        if speed_builds:
            with stages(f"bench {SPEED_ARCH}"):
                benches.append(
                    bench(
                        [build.artifact for build in speed_builds],
                        BATCHES,
                        warmup=1,
                        duration=settings.speed_duration,
                        rounds=settings.speed_rounds,
                        probe_seconds=settings.probe_seconds,
                        progress=progress,
                    )
                )
        with stages(f"optimize {EXAMPLE_NAME}"):
            optimized = optimize(
                source,
                calib_dir=example.calibration,
                data=example.heldout,
                calib_size=settings.calib_size,
                seconds=settings.optimize_seconds,
                rounds=settings.optimize_rounds,
                progress=progress,
            )
        here = [_from_here(path) for path in (source, example.heldout, example.calibration)]
        notes.append(
            (
                "optimize reused the search an earlier demo recorded (same inputs, same machine); "
                if optimized.reused
                else ""
            )
            + "optimize reuses this search (no work) when given the same inputs: sedeploy optimize "
            f"{here[0]} --data {here[1]} --calib-dir {here[2]} --calib-size {settings.calib_size} "
            f"--seconds {settings.optimize_seconds:g} --rounds {settings.optimize_rounds}"
        )
        fp16_note = _fp16_note(builds)
        if fp16_note:
            notes.insert(1, fp16_note)
        first = next(iter(verifications.values()), None)
        rows = [_reference_row(example, first)]
        rows += [_row(build, verifications[build.artifact], benches) for build in builds]
        rows += [_row(build, None, benches) for build in speed_builds]
        with stages("write reports"):
            plots = _write_plots(benches, out, notes)
            report = DemoReport(
                out_dir=out,
                quick=quick,
                rows=tuple(rows),
                verifications=tuple(verifications.values()),
                benches=tuple(benches),
                backends=backends,
                notes=tuple(notes),
                stage_seconds=dict(stages.seconds),
                seconds=time.perf_counter() - started,
                files=(out / "report.md", out / "report.json", *plots),
                optimized=optimized,
            )
            with atomic_output(out / "report.md") as temp_path:
                temp_path.write_text(report.to_markdown(), encoding="utf-8")
            write_json_atomic(out / "report.json", report.to_dict())
    finally:
        stages.close()
    logger.info("demo done in %.0f s: %s", report.seconds, "passed" if report.passed else "FAILED")
    return report
