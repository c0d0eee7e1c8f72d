"""``sedeploy optimize``: measure, don't guess. Search precision x backend x calibration x runner settings.

For one exported FP32 ONNX, :func:`optimize` lists every candidate this machine can
build and run (:func:`candidate_plans`: the backends present; FP32 / FP16 / BF16 /
INT8; for INT8 the calibration methods and the SE path float or quantized; OpenVINO's
float type and hint; ONNX Runtime's split batch), says why it left any out, builds
each one into ``<model>.optimize/`` (reusing earlier builds and calibration ranges),
checks it on held-out images against the FP32 model (accuracy and drop with labels,
else top-1 agreement and cosine), and times them all interleaved at the asked batch
(:mod:`sedeploy.measure.search`). The fastest candidate within the fidelity budget is kept as
``<model>.best.<backend suffix>`` with a manifest that records the whole search, the
options it must be opened with (``runner_defaults``), the machine and the versions:
``sedeploy.load(best)`` runs it as it was measured.

Running it again with the same inputs on the same machine reuses the recorded search
and finishes in seconds; on another machine (other matrix units, cores or backend
versions) the previous choice is reported stale and the search runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sedeploy.artifacts import naming
from sedeploy.artifacts.manifest import (
    PRECISIONS,
    BuildManifest,
    ManifestError,
    checked_manifest,
    commit_with_manifests,
    manifest_path,
)
from sedeploy.artifacts.naming import ARTIFACT_BACKENDS, BACKEND_ARTIFACT_SUFFIXES, optimized_onnx_path
from sedeploy.artifacts.precision import FLOAT_TYPES, float_type_precision, precision_float_type
from sedeploy.building import (
    DEFAULT_CALIBRATION_DIR,
    DEFAULT_CALIBRATION_SIZE,
    ONNX_RECIPE_OPTIONS,
    BuildOptions,
    BuildResult,
    SourceModel,
    build_artifact,
    read_source,
)
from sedeploy.data import listed_images_among
from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError
from sedeploy.files import (
    atomic_output,
    check_writable,
    pause_for_tests,
    refuse_output_over_input,
    sha256_of_file,
    temp_path_beside,
    write_json_atomic,
)
from sedeploy.host import engine_units, matrix_units, usable_cores
from sedeploy.measure.reuse import folder_fingerprint, machine_identity, reuse_problem, stale_reason
from sedeploy.measure.search import (
    Budget,
    Builder,
    Built,
    Checker,
    Fidelity,
    Plan,
    SearchReport,
    search,
)
from sedeploy.measure.search_plot import plot_search
from sedeploy.measure.verification import verify
from sedeploy.optional import import_optional
from sedeploy.runtime import load

logger = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 0.5
"""Percentage points of top-1 accuracy a candidate may lose (default budget); on unlabelled images, the share
of images whose top-1 class changed (verify's rule: it bounds the drop)."""
DEFAULT_BATCH = 8
DEFAULT_MAX_MINUTES = 10.0
BACKEND_CHOICES = ARTIFACT_BACKENDS
PRECISION_CHOICES = PRECISIONS
INT8_CALIBRATIONS: tuple[dict[str, Any], ...] = (
    {"calib_method": "minmax"},
    {"calib_method": "entropy"},
    {"calib_method": "percentile", "percentile": 99.99},
)
"""The calibration methods an INT8 search tries on ONNX Runtime (each with the SE path float and quantized)."""
GATE_WHERE = "the build's check images"
BEST_SUFFIXES = BACKEND_ARTIFACT_SUFFIXES
"""The winner is written as ``<model>.best`` (or the name given) plus its backend's suffix."""


def candidate_plans(
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batch: int = DEFAULT_BATCH,
) -> tuple[list[Plan], list[tuple[Plan, str]], list[str]]:
    """The candidates worth trying on this machine, those left out with the reason, and notes.

    ``backends`` / ``precisions``: what may be chosen (default: all). The ONNX Runtime
    FP32 candidate is always first: it is the baseline every ratio is taken against.
    """
    from sedeploy.backends import onnxruntime as ort_backend
    from sedeploy.backends import tensorrt as trt_backend

    asked_backends = tuple(backends or BACKEND_CHOICES)
    asked_precisions = tuple(precisions or PRECISION_CHOICES)
    for name in asked_backends:
        if name not in BACKEND_CHOICES:
            raise ConfigError(f"unknown backend {name!r}; valid values: {', '.join(BACKEND_CHOICES)}")
    for name in asked_precisions:
        if name not in PRECISION_CHOICES:
            raise ConfigError(f"unknown precision {name!r}; valid values: {', '.join(PRECISION_CHOICES)}")
    units = matrix_units()
    plans: list[Plan] = [Plan.of("onnxruntime", "fp32")]
    pruned: list[tuple[Plan, str]] = []
    notes: list[str] = []
    split = {"sessions": 2}
    cuda = ort_backend.has_cuda()
    can_split = batch >= 2 and usable_cores() >= 2 and not cuda

    if "onnxruntime" in asked_backends:
        if "fp32" in asked_precisions:
            if can_split:
                plans.append(Plan.of("onnxruntime", "fp32", runner=split))
            else:
                pruned.append(
                    (
                        Plan.of("onnxruntime", "fp32", runner=split),
                        "split batch needs batch >= 2, 2 cores and the CPU provider",
                    )
                )
        if "fp16" in asked_precisions:
            if cuda:
                plans.append(Plan.of("onnxruntime", "fp16"))
            else:
                pruned.append(
                    (
                        Plan.of("onnxruntime", "fp16"),
                        "ONNX Runtime's CPU kernels run an FP16 file in FP32 (a file for GPUs): it cannot beat fp32",
                    )
                )
        if "bf16" in asked_precisions:
            pruned.append((Plan.of("onnxruntime", "bf16"), "ONNX Runtime has no faster BF16 path on a CPU"))
        if "int8" in asked_precisions:
            recipes = [{**method, "quantize_se": se} for method in INT8_CALIBRATIONS for se in (False, True)]
            for index, recipe in enumerate(recipes):
                plans.append(Plan.of("onnxruntime", "int8", recipe))
                if index == 0 and can_split:
                    plans.append(Plan.of("onnxruntime", "int8", recipe, split))
            pruned.append(
                (
                    Plan.of("onnxruntime", "int8", {"target": "tensorrt"}),
                    "the tensorrt flavour (signed, symmetric) is a GPU file; on a CPU it runs slower than the cpu flavour",
                )
            )
            if can_split:
                notes.append(
                    "split batch is tried on fp32 and the first INT8 recipe: the recipe does not change it"
                )

    if "openvino" in asked_backends:
        from sedeploy.backends import openvino as ov_backend

        try:
            ov_backend.require_available()
            missing = None
        except MissingDependencyError:
            missing = "OpenVINO is not installed (pip install 'sedeploy[openvino]')"
        hints = ("latency", "throughput") if batch > 1 else ("latency",)
        openvino_units = engine_units("openvino", units)  # no BF16 on Arm; ONEDNN_MAX_CPU_ISA honoured
        floats = {
            kind: kind == "f32" or openvino_units.best(float_type_precision(kind)) is not None
            for kind in FLOAT_TYPES
        }
        for precision in PRECISIONS:
            if precision not in asked_precisions:
                continue
            if missing:
                pruned.append((Plan.of("openvino", precision), missing))
                continue
            kinds = FLOAT_TYPES if precision == "int8" else (precision_float_type(precision),)
            for kind in kinds:
                if not floats[kind]:
                    unit = float_type_precision(kind).upper()
                    pruned.append(
                        (
                            Plan.of("openvino", precision, runner={"float_type": kind}),
                            f"this CPU has no {unit} units",
                        )
                    )
                    continue
                for hint in hints:
                    plans.append(Plan.of("openvino", precision, runner={"float_type": kind, "hint": hint}))
        if batch == 1 and not missing:
            notes.append(
                "OpenVINO's throughput hint is not tried at batch 1: one request cannot use two streams"
            )
        if not missing and "int8" in asked_precisions:
            notes.append(
                "OpenVINO's INT8 comes from NNCF's own recipe: the calibration methods and SE choice are "
                "ONNX Runtime's"
            )

    if "int8" in asked_precisions:
        notes.append("INT8 candidates that miss their build's gate are repaired, not dropped")
    if "tensorrt" in asked_backends:
        available, reason = trt_backend.availability()
        for precision in PRECISIONS:
            if precision not in asked_precisions:
                continue
            plan = Plan.of("tensorrt", precision, {"target": "tensorrt"} if precision == "int8" else {})
            if precision == "bf16":
                pruned.append(
                    (plan, "bf16 is built for OpenVINO on CPUs; on a GPU FP16 is TensorRT's half type")
                )
            elif available:
                plans.append(plan)
            else:
                pruned.append((plan, f"TensorRT cannot run here: {reason.split('; ')[0]}"))
    return plans, pruned, notes


@dataclass(frozen=True)
class OptimizeReport:
    """The search, the artifact it kept (None when nothing met the budget) and how this run went."""

    model: Path
    search: SearchReport
    best: Path | None
    reused: bool = False
    """True when the recorded search of an earlier run was reused (same inputs, same machine)."""
    stale: str | None = None
    """Why an earlier choice no longer applied (another machine, other inputs), or None."""
    files: tuple[Path, ...] = ()
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.best is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "best": str(self.best) if self.best else None,
            "passed": self.passed,
            "reused": self.reused,
            "stale": self.stale,
            "files": [str(path) for path in self.files],
            "seconds": round(self.seconds, 2),
            **self.search.to_dict(),
        }

    def to_text(self) -> str:
        lines = [f"optimize {self.model}: {self.search.machine.get('description', '')}"]
        if self.stale:
            lines.append(f"previous choice is stale: {self.stale}; searched again")
        if self.reused:
            lines.append(
                "reused the search recorded in the best artifact's manifest (same inputs, same machine)"
            )
        lines += ["", self.search.to_text()]
        if self.best is not None:
            lines.append(f"kept {self.best} (sedeploy.load opens it with the measured settings)")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        return f"# sedeploy optimize {self.model.name}\n\n" + self.search.to_markdown()


def _changed_inputs(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """Which of a search's inputs changed, in parameter words: ``seconds 0.3 -> 2.0; data changed``."""
    changed = []
    for name in sorted(set(recorded) | set(now)):
        before, after = recorded.get(name), now.get(name)
        if before == after:
            continue
        fingerprint = name in ("source_sha256", "calibration", "data")
        changed.append(f"{name} changed" if fingerprint else f"{name} {before!r} -> {after!r}")
    return "; ".join(changed) or "recorded without its inputs"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _build_output(folder: Path, stem: str, plan: Plan) -> Path:
    """Where a plan's build goes in its own folder (the file ``-o`` names for that backend)."""
    source = folder / f"{stem}.onnx"
    if plan.backend == "openvino":
        return naming.openvino_path(source, plan.precision)
    default_flavour = "tensorrt" if plan.backend == "tensorrt" else "cpu"
    flavour = plan.build_options.get("target") or default_flavour if plan.precision == "int8" else None
    precision_file = naming.precision_onnx_path(source, plan.precision, flavour)
    if plan.backend == "tensorrt":
        return naming.engine_path(precision_file)
    if plan.precision == "fp32":
        return naming.optimized_onnx_path(source)  # FP32: -o names the optimized graph
    return precision_file


def _run_file(output: Path, plan: Plan) -> Path:
    """The file a plan's build runs from: ONNX Runtime's optimized graph beside a precision file, else ``output``."""
    if plan.backend == "onnxruntime" and plan.precision != "fp32":
        return optimized_onnx_path(output)
    return output


def _options_for(plan: Plan, base: BuildOptions) -> BuildOptions:
    """The plan's build options; OpenVINO's runtime is pinned (its own float type, latency): the search measures the others."""
    float_type = precision_float_type("fp32" if plan.precision == "int8" else plan.precision)
    pinned: dict[str, Any] = (
        {"float_type": float_type, "hint": "latency"} if plan.backend == "openvino" else {}
    )
    return replace(base, backend=plan.backend, precision=plan.precision, **pinned, **plan.build_options)


def _built(result: BuildResult, artifact: Path, reused: bool) -> Built:
    manifest = checked_manifest(artifact, required=True)
    audit = (manifest.precision_audit or {}) if manifest else {}
    gate = Fidelity.from_comparison(result.fidelity, GATE_WHERE) if result.fidelity is not None else None
    return Built(artifact, reused=reused, shares=audit.get("shares"), gate=gate, seconds=result.seconds)


def _gate_record(run_file: Path) -> Path:
    """Where the build's own parity figures are kept beside a candidate build (manifests do not hold them)."""
    return run_file.with_name(f".{run_file.name}.gate.json")


def _optimize_builder(source: SourceModel, work: Path, base: BuildOptions, progress: bool) -> Builder:
    """Builds each plan into its own folder under ``work``; a build whose manifest says it is this one is reused."""
    source_sha256 = source.sha256

    def build(plan: Plan) -> Built:
        folder = work / _slug(Plan.of(plan.backend, plan.precision, plan.build_options).label)
        output = _build_output(folder, source.path.stem, plan)
        options = _options_for(plan, base)
        run_file = _run_file(output, plan)
        wanted = options.to_dict()
        problem = reuse_problem(
            run_file,
            source_sha256,
            plan.backend,
            plan.precision,
            options.target or "cpu" if plan.precision == "int8" else None,
            options.calib_dir,
            options.calib_size,
            {key: wanted[key] for key in (*ONNX_RECIPE_OPTIONS, "seed") if key != "target"}
            if plan.backend == "onnxruntime"
            else {},
        )
        record = _gate_record(run_file)
        if problem is None:
            try:
                saved = json.loads(record.read_text(encoding="utf-8"))
                if saved.get("artifact_sha256") == sha256_of_file(run_file):
                    logger.info("optimize: reusing %s", run_file)
                    gate = Fidelity.from_dict(saved["gate"]) if saved.get("gate") else None
                    return Built(run_file, reused=True, shares=saved.get("shares"), gate=gate)
            except (OSError, ValueError, KeyError, TypeError):
                pass
            problem = "its parity record is missing"
        logger.info("optimize: building %s (%s)", plan.label, problem)
        result = build_artifact(source, options, output=output, progress=progress)
        built = _built(result, run_file, reused=False)
        write_json_atomic(
            record,
            {
                "artifact_sha256": sha256_of_file(run_file),
                "shares": dict(built.shares) if built.shares else None,
                "gate": built.gate.to_dict() if built.gate else None,
            },
        )
        return built

    return build


def _optimize_checker(source: SourceModel, data: Path, batch: int) -> Checker:
    """Verifies each candidate on the held-out data against the FP32 source; results cached beside the build."""
    data_fingerprint = folder_fingerprint(
        data, times=True
    )  # a cache on this machine: a rewritten image counts
    source_sha256 = source.sha256

    def check(plan: Plan, built: Built) -> Fidelity:
        numeric = {key: value for key, value in plan.runner_options.items() if key == "float_type"}
        key = hashlib.sha256(
            json.dumps(
                [sha256_of_file(built.artifact), source_sha256, data_fingerprint, numeric], sort_keys=True
            ).encode()
        ).hexdigest()[:16]
        cache = built.artifact.parent / f".fidelity.{key}.json"
        if cache.is_file():
            try:
                return Fidelity.from_dict(json.loads(cache.read_text(encoding="utf-8")))
            except (ValueError, KeyError, TypeError):
                pass
        report = verify(built.artifact, source.path, data=data, batch=batch, runner_options=numeric)
        fidelity = Fidelity.from_comparison(
            report.comparison, accuracy=report.artifact_accuracy, reference_accuracy=report.reference_accuracy
        )
        write_json_atomic(cache, fidelity.to_dict())
        return fidelity

    return check


def _open_plan(plan: Plan, built: Built, threads: int | None) -> Any:
    options = plan.runner_options
    if threads is not None and plan.backend in ("onnxruntime", "openvino"):
        options["threads"] = threads
    return load(built.artifact, **options)


def _best_stem(model: Path, output: str | os.PathLike[str] | None, data: Path | None = None) -> Path:
    """The name the winner is written under (``<model>.best``, or ``output`` less a backend suffix).

    Every file the winner may be written as is refused, before any work, when it is one of the search's inputs
    (the source model and its manifest, a held-out image): compared as files, so links and hard links count.
    """
    path = model.with_name(f"{model.stem}.best")
    if output is not None:
        path = Path(output)
        for suffix in BEST_SUFFIXES.values():
            if path.name.endswith(suffix):
                path = path.with_name(path.name[: -len(suffix)])
                break
    ours = [path, *(path.with_name(path.name + suffix) for suffix in (*BEST_SUFFIXES.values(), ".onnx"))]
    refuse_output_over_input(
        [("output", candidate) for candidate in ours],
        [
            ("the source model", model),
            ("the source model's manifest", manifest_path(model)),
            *(("a held-out image", image) for image in (listed_images_among(data, ours) if data else [])),
        ],
    )
    return path


def _ours(path: Path) -> bool:
    """Whether ``path`` is a winner an earlier ``optimize`` wrote (its manifest records a search)."""
    try:
        manifest = checked_manifest(path, verify_hash=False) if path.is_file() else None
    except ManifestError:
        return False
    return manifest is not None and manifest.search is not None


def _remove_earlier(stem: Path, keep: set[Path]) -> None:
    """Remove the winners an earlier ``optimize`` wrote under ``stem`` (only those), except ``keep``."""
    for suffix in (*BEST_SUFFIXES.values(), ".onnx"):
        path = stem.with_name(stem.name + suffix)
        if path in keep or not _ours(path):
            continue
        extras = [path.with_suffix(".bin")] if suffix == BEST_SUFFIXES["openvino"] else []
        for file in (path, *extras, manifest_path(path)):
            if file not in keep:
                file.unlink(missing_ok=True)


def _previous_best(stem: Path) -> tuple[Path, BuildManifest] | None:
    """The newest earlier winner written under ``stem`` whose files still match their manifest."""
    found = []
    for suffix in BEST_SUFFIXES.values():
        path = stem.with_name(stem.name + suffix)
        try:
            manifest = checked_manifest(path) if path.is_file() else None
        except ManifestError:
            manifest = None
        if manifest is not None and manifest.search is not None:
            found.append((manifest.created, path, manifest))
    if not found:
        return None
    _, path, manifest = max(found, key=lambda item: item[0])
    return path, manifest


def _write_best(stem: Path, winner_artifact: Path, plan: Plan, record: dict[str, Any]) -> tuple[Path, ...]:
    """Copy the winner to ``stem`` + its suffix with a manifest that records the search; atomically, as one unit.

    An ONNX Runtime INT8/FP16 winner also gets its portable precision file as ``stem.onnx``: the
    ``.ort.onnx`` holds this CPU's optimized layouts, while Triton and other machines take the portable
    one (for an FP32 winner that is the source model itself). An OpenVINO winner's manifest records the
    float type and hint it was measured with. Earlier winners under the same stem are removed once the new
    one is in place. Returns the files written, the one to load first.
    """
    best = stem.with_name(stem.name + BEST_SUFFIXES[plan.backend])
    manifest = checked_manifest(winner_artifact, required=True)
    assert manifest is not None
    engine = dict(manifest.engine) if manifest.engine is not None else None
    pairs = [(winner_artifact, best)]
    if plan.backend == "openvino":
        assert engine is not None
        pairs.append((winner_artifact.with_suffix(".bin"), best.with_suffix(".bin")))
        engine["weights"] = best.with_suffix(".bin").name
        runner = plan.runner_options
        engine["inference_precision"] = runner.get("float_type", engine.get("inference_precision"))
        engine["performance_hint"] = runner.get("hint", engine.get("performance_hint"))
        if "hint" in runner:  # the search measured this one hint at every batch
            engine.pop("throughput_from_batch", None)
        engine["runtime_choice"] = {"chosen_by": "sedeploy optimize", "search_key": record["key"]}
    manifests = [(replace(manifest, engine=engine, runner_defaults=plan.runner_options, search=record), best)]
    if plan.backend == "onnxruntime" and plan.precision != "fp32":
        portable = naming.portable_onnx_path(winner_artifact)
        portable_manifest = checked_manifest(portable, required=True)
        assert portable_manifest is not None
        companion = stem.with_name(stem.name + ".onnx")
        pairs.append((portable, companion))
        manifests.append((replace(portable_manifest, search=record), companion))
    manifests = [(replace(entry, artifact=path.name), path) for entry, path in manifests]
    staged: list[tuple[Path, Path]] = []
    try:
        for origin, destination in pairs:
            temp = temp_path_beside(destination)
            staged.append((temp, destination))
            shutil.copyfile(origin, temp)
        pause_for_tests("best")
        commit_with_manifests(staged, manifests)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    written = {path for _, path in pairs} | {manifest_path(path) for _, path in manifests}
    _remove_earlier(stem, written)
    return tuple(path for _, path in manifests)


def optimize(
    model_path: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str],
    calib_dir: str | os.PathLike[str] | None = None,
    max_drop: float | None = None,
    min_agreement: float | None = None,
    min_cosine: float | None = None,
    batch: int = DEFAULT_BATCH,
    max_minutes: float | None = DEFAULT_MAX_MINUTES,
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    calib_size: int = DEFAULT_CALIBRATION_SIZE,
    output: str | os.PathLike[str] | None = None,
    seconds: float = 2.0,
    rounds: int = 3,
    reuse: bool = True,
    markdown: str | os.PathLike[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> OptimizeReport:
    """Find the fastest artifact of ``model_path`` within the fidelity budget on this machine; see the module docstring.

    ``data``: held-out images (class sub-folders give labels) or a ``.npy`` of
    preprocessed inputs. The budget: ``max_drop`` percentage points of top-1 accuracy
    (default :data:`DEFAULT_MAX_DROP`; on unlabelled data the share of images whose
    top-1 changed), and optionally ``min_agreement`` (top-1 agreement with FP32) and
    ``min_cosine``. ``max_minutes``: no candidate is started after that (what was
    built is still timed; such a search is not reused later). Returns the report
    whether a candidate met the budget or not (``report.passed``); when none did,
    earlier winners under the same name are removed.
    """
    started = time.perf_counter()
    model = Path(model_path)
    if not os.path.lexists(model):
        raise BadInputError(
            f"{model} does not exist; give the exported .onnx file (sedeploy export writes one)"
        )
    if model.suffix.lower() != ".onnx" or not model.is_file():
        raise BadInputError(f"{model} is not an exported .onnx file; export one with sedeploy export")
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}", params=("batch",))
    if max_minutes is not None and max_minutes <= 0:
        raise ConfigError(f"max_minutes must be positive, got {max_minutes}", params=("max_minutes",))
    if seconds <= 0 or rounds < 1:
        raise ConfigError("seconds must be positive and rounds at least 1", params=("seconds", "rounds"))
    data_path = Path(data)
    if not data_path.exists():
        raise BadInputError(f"held-out data {data_path} does not exist; give an image folder or a .npy file")
    source = read_source(model)
    metadata = source.metadata
    if metadata is None:
        raise BadInputError(f"{model} has no sedeploy metadata; export it with sedeploy export")
    if metadata.max_batch is not None and batch > metadata.max_batch:
        raise ConfigError(
            f"batch {batch} is above the model's max batch {metadata.max_batch}; pass a smaller batch or export "
            "with a larger max batch",
            params=("batch",),
        )
    source_precision = source.precision
    if source_precision != "fp32":
        raise ConfigError(f"{model} is a {source_precision} file; give the exported FP32 ONNX")
    for path in (markdown, plot):  # fail now, not after the search has published its winner
        if path is not None:
            check_writable(path)
    if plot is not None:
        import_optional("matplotlib")
    budget = Budget(
        max_drop=DEFAULT_MAX_DROP if max_drop is None else max_drop,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        verify_cosine=True,  # unless min_cosine is given: the kept artifact passes sedeploy verify
    )
    calibration = Path(calib_dir) if calib_dir is not None else None
    calibration_folder = calibration or DEFAULT_CALIBRATION_DIR
    stem = _best_stem(model, output, data_path if data_path.is_dir() else None)
    key_inputs = {
        "source_sha256": source.sha256,
        "calibration": folder_fingerprint(calibration_folder),
        "calib_size": calib_size,
        "data": folder_fingerprint(data_path),
        "budget": budget.to_dict(),
        "batch": batch,
        "seconds": seconds,
        "rounds": rounds,
        "backends": sorted(backends or BACKEND_CHOICES),
        "precisions": sorted(precisions or PRECISION_CHOICES),
    }
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()
    machine = machine_identity()
    stale = None
    previous = _previous_best(stem) if reuse else None
    if previous is not None:
        path, manifest = previous
        record = manifest.search or {}
        recorded = SearchReport.from_dict(record.get("report") or {})
        if record.get("key") != key:
            logger.warning(
                "optimize: the search recorded in %s had other inputs (%s); searching again (the same inputs "
                "reuse it)",
                path.name,
                _changed_inputs(record.get("inputs") or {}, key_inputs),
            )
        elif recorded.stopped_early:
            logger.info("optimize: the search recorded in %s stopped early; searching again", path)
        else:
            stale = stale_reason(record.get("machine") or {}, machine)
            if stale is None:
                logger.info("optimize: reusing the search recorded in %s", manifest_path(path))
                result = OptimizeReport(
                    model, recorded, path, reused=True, seconds=time.perf_counter() - started
                )
                return _with_files(result, markdown, plot)

    plans, pruned, notes = candidate_plans(backends, precisions, batch)
    if not calibration_folder.is_dir():
        reason = f"no calibration images ({calibration_folder} is not a folder): give calib_dir"
        pruned = [(plan, reason) for plan in plans if plan.precision == "int8"] + pruned
        plans = [plan for plan in plans if plan.precision != "int8"]
    baseline_asked = (backends is None or "onnxruntime" in backends) and (
        precisions is None or "fp32" in precisions
    )
    work = model.with_name(f"{model.stem}.optimize")
    base = BuildOptions(calib_dir=calibration, calib_size=calib_size)
    deadline = time.monotonic() + 60 * max_minutes if max_minutes is not None else None
    report = search(
        plans,
        _optimize_builder(source, work, base, progress),
        _open_plan,
        check=_optimize_checker(source, data_path, batch),
        budget=budget,
        batches=(batch,),
        pruned=pruned,
        choosable=lambda plan: baseline_asked or plan != plans[0],
        seconds=seconds,
        rounds=rounds,
        deadline=deadline,
        notes=notes,
        progress=progress,
    )
    best = None
    winner = report.winner
    if winner is not None and winner.artifact is not None:
        record = {"key": key, "inputs": key_inputs, "machine": machine, "report": report.to_dict()}
        best, *portable = _write_best(stem, Path(winner.artifact), winner.plan, record)
        logger.info("optimize: kept %s%s", best, f" (portable: {portable[0].name})" if portable else "")
    else:  # an earlier winner would still load as the choice: it no longer is one
        _remove_earlier(stem, set())
    result = OptimizeReport(model, report, best, stale=stale, seconds=time.perf_counter() - started)
    return _with_files(result, markdown, plot)


def _with_files(
    report: OptimizeReport, markdown: str | os.PathLike[str] | None, plot: str | os.PathLike[str] | None
) -> OptimizeReport:
    files = []
    if markdown is not None:
        with atomic_output(markdown) as temp:
            temp.write_text(report.to_markdown(), encoding="utf-8")
        files.append(Path(markdown))
    if plot is not None:
        files.append(plot_search(report.search, Path(plot), report.model.name))
    return replace(report, files=tuple(files))


__all__ = [
    "DEFAULT_MAX_DROP",
    "OptimizeReport",
    "candidate_plans",
    "machine_identity",
    "optimize",
    "plot_search",
]
