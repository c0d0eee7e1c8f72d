"""``sedeploy verify``: does an artifact still compute what its reference computes, on the same inputs?

The artifact (any file :func:`sedeploy.load` opens) and a reference run on one
set of inputs, and :func:`sedeploy.compare.compare_logits` measures the gap.

Reference
    By default the FP32 ONNX the artifact was built from: its build manifest
    records that file's sha256, and the file is looked for beside the artifact.
    ``reference`` may name another ONNX file, a weights file (the PyTorch model
    named in the artifact's metadata, with those weights), or an architecture.

Inputs
    ``data`` is an image folder (read with the artifact's own preprocessing;
    class sub-folders give labels) or a ``.npy`` file of preprocessed inputs
    (N, C, H, W). Without it, ``num`` deterministic synthetic images: uniform
    random pixels, normalised with the model's mean and std. Samples whose input
    holds NaN or infinity are counted, reported and left out of the figures.

Pass/fail
    Every sample's cosine similarity must reach ``min_cosine``, the artifact's
    logits must be finite, and the top-1 figure must stay within
    ``max_top1_drop`` percentage points: with labels, the accuracy drop; with
    unlabeled images, the share of images whose top-1 class changed (an upper
    bound on the drop). On synthetic inputs the top-1 figure is reported but not
    gated: logits of noise are near ties, so harmless rounding flips them.
    Defaults depend on the artifact's precision (:data:`DEFAULT_THRESHOLDS`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sedeploy.artifacts.manifest import matching_manifest
from sedeploy.artifacts.metadata import ModelMetadata
from sedeploy.artifacts.naming import artifact_backend, is_optimized_onnx, portable_onnx_path
from sedeploy.artifacts.precision import detect_precision
from sedeploy.backends.audit import DEFAULT_MIN_PRECISION_SHARE, audit, audit_failure, gate_applies
from sedeploy.backends.base import Runner
from sedeploy.compare import (
    DEFAULT_THRESHOLDS,
    Comparison,
    Thresholds,
    compare_logits,
    judge,
    top1_accuracy,
    top1_rule_applies,
)
from sedeploy.data import load_image_set
from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError
from sedeploy.files import sha256_of_file
from sedeploy.models.record import TrainingRecord
from sedeploy.progress import progress_bar
from sedeploy.runtime import load

if TYPE_CHECKING:
    from sedeploy.measure.layers import LayerReport

logger = logging.getLogger(__name__)


DEFAULT_IMAGES = 512
"""Images read from ``data`` unless ``num`` says otherwise (a seeded sample, as calibration takes)."""
DEFAULT_SYNTHETIC = 64
DEFAULT_BATCH = 32
TOP_K = 5
LAYER_IMAGES = 128
"""Inputs the per-layer INT8 report (``layers=True``) runs on: the first of verify's own."""


@dataclass(frozen=True)
class VerifyReport:
    """Figures and verdict of one verification; ``failures`` names each failing figure (empty: passed).

    ``top5_agreement``: share of samples whose reference top-1 class is in the
    artifact's top 5. ``mean_abs_error``: mean over all logits. Accuracies are
    fractions; ``accuracy_drop`` is in percentage points.
    """

    artifact: str
    artifact_runner: str
    reference: str
    reference_runner: str
    precision: str
    inputs: str
    samples: int
    nonfinite_inputs: int
    comparison: Comparison
    mean_abs_error: float
    top5_agreement: float
    reference_accuracy: float | None
    artifact_accuracy: float | None
    accuracy_drop: float | None
    top1_gate: str
    thresholds: Thresholds
    failures: tuple[str, ...]
    skipped_images: tuple[dict[str, str], ...]
    seconds: float
    precision_audit: dict[str, Any] | None = None
    """The artifact's precision audit (``backends.audit``): what its layers run in here; None where it cannot run."""
    notes: tuple[str, ...] = ()
    """What the reader should know that is no failure (a weak model by its own record, a rule not applied)."""
    layer_report: LayerReport | None = None
    """``layers=True``: the error each INT8 layer adds, worst first (:func:`sedeploy.measure.layers.layer_errors`)."""

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; with the per-layer report, ``layers`` is its rows (worst first) and ``layer_report``
        the rest of it."""
        data = asdict(replace(self, layer_report=None))
        del data["layer_report"]
        if self.layer_report is not None:
            layers = self.layer_report.to_dict()
            data["layers"] = layers.pop("layers")
            data["layer_report"] = layers
        data["comparison"] = self.comparison.to_dict()
        data["passed"] = self.passed
        data["failures"] = list(self.failures)
        data["skipped_images"] = list(self.skipped_images)
        data["notes"] = list(self.notes)
        data["seconds"] = round(self.seconds, 3)
        return data

    def to_text(self) -> str:
        """A table for people: each figure, its threshold where it has one, and the verdict."""
        c, limits = self.comparison, self.thresholds
        rows: list[tuple[str, str, str, str]] = [
            ("max abs error", f"{c.max_abs_error:.3e}", "", ""),
            ("mean abs error", f"{self.mean_abs_error:.3e}", "", ""),
            ("max error / logit spread", f"{c.max_rel_error:.3e}", "", ""),
            (
                "cosine min",
                f"{c.min_cosine:.6f}",
                f">= {limits.min_cosine}",
                _mark(c.min_cosine >= limits.min_cosine),
            ),
            ("cosine mean", f"{c.mean_cosine:.6f}", "", ""),
        ]
        changed = 100 * (1 - c.top1_agreement)
        gated_changes = self.top1_gate == "top-1 changes"
        rows.append(
            (
                "top-1 agreement",
                f"{100 * c.top1_agreement:.2f}%",
                f"changes <= {limits.max_top1_drop} pp" if gated_changes else "",
                _mark(changed <= limits.max_top1_drop) if gated_changes else "",
            )
        )
        rows.append(("top-5 agreement", f"{100 * self.top5_agreement:.2f}%", "", ""))
        if self.accuracy_drop is not None:
            assert self.reference_accuracy is not None and self.artifact_accuracy is not None
            rows += [
                ("accuracy, reference", f"{100 * self.reference_accuracy:.2f}%", "", ""),
                ("accuracy, artifact", f"{100 * self.artifact_accuracy:.2f}%", "", ""),
                (
                    "accuracy drop",
                    f"{self.accuracy_drop:.2f} pp",
                    f"<= {limits.max_top1_drop} pp",
                    _mark(self.accuracy_drop <= limits.max_top1_drop),
                ),
            ]
        rows.append(("finite outputs", "yes" if c.finite else "no", "all", _mark(c.finite)))
        widths = [max(len(row[i]) for row in [("figure", "value", "threshold", ""), *rows]) for i in range(3)]
        lines = [
            f"verify {self.artifact} ({self.precision}; {self.artifact_runner})",
            f"  against {self.reference} ({self.reference_runner})",
            f"  on {self.samples} inputs: {self.inputs}",
        ]
        if self.nonfinite_inputs:
            lines.append(f"  {self.nonfinite_inputs} input(s) held NaN or infinity and were left out")
        lines += [f"  note: {note}" for note in self.notes]
        if self.skipped_images:
            lines.append(f"  {len(self.skipped_images)} unreadable image(s) skipped")
        if self.precision_audit is not None:
            shares = ", ".join(
                f"{name} {100 * share:.1f}%" for name, share in self.precision_audit["shares"].items()
            )
            lines.append(f"  runs as: {shares} of the MACs on {self.precision_audit['backend']}")
        if self.top1_gate == "not gated":
            lines.append("  top-1 is not gated on synthetic inputs (give --data for that)")
        elif self.top1_gate.startswith("not gated"):
            lines.append(
                f"  top-1 is not gated: {self.samples} images cannot resolve {self.thresholds.max_top1_drop} pp "
                "(one image decides); the cosine floor does"
            )
        lines.append("")
        header = ("figure", "value", "threshold", "")
        for row in [header, *rows]:
            lines.append(
                "  "
                + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                + f"  {row[3]}"
            )
        if self.layer_report is not None:
            lines += ["", *self.layer_report.to_text().splitlines()]
        lines.append("")
        lines.append("PASS" if self.passed else "FAIL: " + "; ".join(self.failures))
        return "\n".join(line.rstrip() for line in lines)


def _onnxruntime_has_cuda() -> bool:
    from sedeploy.backends import onnxruntime as ort_backend

    return ort_backend.has_cuda()


def _audit(
    artifact: Path, reference: Path, precision: str, min_share: float, failures: list[str]
) -> dict[str, Any] | None:
    """The artifact's precision audit, re-run on the file (a manifest's record is not trusted); adds the gate's
    failure where the asked precision is not what runs."""
    try:
        report = audit(artifact, source=reference if reference.suffix.lower() == ".onnx" else None)
    except (MissingDependencyError, ImportError, BadInputError) as error:
        logger.info("precision audit of %s not run: %s", artifact, error)
        return None
    manifest = matching_manifest(artifact)
    recipe = manifest.recipe if manifest else {}
    if gate_applies(report.backend, recipe, precision, _onnxruntime_has_cuda()):
        failure = audit_failure(precision, report, min_share, recipe.get("float_nodes") or ())
        if failure:
            failures.append(failure)
    return report.to_dict()


def _mark(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def find_reference(artifact: str | os.PathLike[str]) -> Path:
    """The FP32 ONNX ``artifact`` was built from: the file beside it whose sha256 its manifest records (for a
    quantization-aware export, the float twin its recipe names: the same fine-tuned weights in FP32)."""
    path = Path(artifact)
    manifest = matching_manifest(path)
    fix = "give reference (the FP32 .onnx, the weights or the architecture)"
    if manifest is None:
        raise ConfigError(
            f"{path} has no build manifest that names its source model; {fix}", params=("reference",)
        )
    recipe = manifest.recipe or {}
    if recipe.get("qat") and recipe.get(
        "float_model"
    ):  # a QAT export's source is INT8: its float twin judges
        twin = path.parent / str(recipe["float_model"])
        if twin.is_file() and sha256_of_file(twin) == recipe.get("float_model_sha256"):
            return twin
        raise ConfigError(
            f"{path} was built from a quantization-aware export whose float model {twin.name} (same weights, FP32) "
            f"is not in {path.parent} as it was; {fix}",
            params=("reference",),
        )
    parts = path.name.split(".")
    by_name = [path.with_name(".".join(parts[:count]) + ".onnx") for count in range(len(parts) - 1, 0, -1)]
    others = sorted(path.parent.glob("*.onnx"))
    for candidate in dict.fromkeys([*by_name, *others]):
        if (
            candidate != path
            and candidate.is_file()
            and sha256_of_file(candidate) == manifest.source_onnx_sha256
        ):
            return candidate
    raise ConfigError(
        f"the FP32 ONNX {path.name} was built from (sha256 {manifest.source_onnx_sha256[:12]}...) is not in "
        f"{path.parent}; {fix}",
        params=("reference",),
    )


def _open_reference(
    reference: str | os.PathLike[str], metadata: ModelMetadata | None, device: str | None
) -> Runner:
    if artifact_backend(reference) == "torch":
        return load(reference, device=device, metadata=metadata)
    return load(reference, device="cpu" if artifact_backend(reference) == "onnxruntime" else device)


@dataclass(frozen=True)
class _Inputs:
    arrays: np.ndarray
    labels: np.ndarray | None
    description: str
    synthetic: bool
    skipped: tuple[dict[str, str], ...] = ()


def synthetic_inputs(metadata: ModelMetadata, count: int, seed: int = 0) -> np.ndarray:
    """``count`` deterministic image-like inputs: uniform random pixels in [0, 1] normalised with the model's stats."""
    channels, height, width = metadata.input_size
    pixels = np.random.default_rng(seed).random((count, channels, height, width), dtype=np.float32)
    mean = np.asarray(metadata.preprocessing.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(metadata.preprocessing.std, dtype=np.float32).reshape(-1, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)


def _read_inputs(
    data: str | os.PathLike[str] | None, metadata: ModelMetadata, num: int | None, seed: int, progress: bool
) -> _Inputs:
    if data is None:
        count = num or DEFAULT_SYNTHETIC
        return _Inputs(synthetic_inputs(metadata, count, seed), None, f"synthetic (seed {seed})", True)
    path = Path(data)
    if path.suffix.lower() == ".npy" and path.is_file():
        try:
            arrays = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise BadInputError(
                f"cannot read {path} as a numpy array ({error}); save it with numpy.save"
            ) from None
        if arrays.ndim != 4:
            raise BadInputError(f"{path} holds an array of shape {arrays.shape}; verify needs (N, C, H, W)")
        arrays = arrays[:num] if num else arrays
        return _Inputs(arrays, None, f"arrays from {path}", False)
    image_set = load_image_set(
        path,
        metadata.preprocessing,
        metadata.in_chans,
        limit=num or DEFAULT_IMAGES,
        seed=seed,
        progress=progress,
    )
    report = image_set.report
    skipped = tuple({"path": skip.path, "reason": skip.reason} for skip in report.skipped)
    labels, description = image_set.labels, f"images from {path}"
    if labels is not None and report.class_names is not None:
        labels = _model_labels(labels, report.class_names, metadata)
        description += f" (labels from {len(report.class_names)} class folders)"
    return _Inputs(image_set.images, labels, description, False, skipped)


def _model_labels(labels: np.ndarray, class_names: tuple[str, ...], metadata: ModelMetadata) -> np.ndarray:
    """Folder labels as model class indices: by name when the model's labels name every folder, else by position."""
    if metadata.labels is not None and set(class_names) <= set(metadata.labels):
        index_of = {name: metadata.labels.index(name) for name in class_names}
        return np.array([index_of[class_names[label]] for label in labels], dtype=np.int64)
    if len(class_names) > metadata.num_classes:
        raise BadInputError(
            f"the data has {len(class_names)} class folders but the model has {metadata.num_classes} classes; "
            "give a folder whose class sub-folders are the model's classes"
        )
    return labels


def _run(runner: Runner, inputs: np.ndarray, batch: int, name: str, progress: bool) -> np.ndarray:
    parts = []
    with progress_bar(total=len(inputs), desc=name, unit="img", enabled=progress) as bar:
        for start in range(0, len(inputs), batch):
            parts.append(runner(inputs[start : start + batch]))
            bar.update(min(batch, len(inputs) - start))
    return np.concatenate(parts, axis=0)


CHANCE_MARGIN = 0.1
"""A reference within this share of the way from chance to perfect accuracy is "at chance": it answers nothing."""
RECORD_MARGIN = 0.1
"""A reference more than this far (absolute) below the accuracy its training record states is not that model."""


def _reference_problems(
    record: TrainingRecord | None,
    metadata: ModelMetadata,
    reference_accuracy: float | None,
    notes: list[str] | None = None,
) -> list[str]:
    """Why the reference itself cannot be trusted: parity with a wrong reference is no pass.

    A reference near chance whose training record says the same (a weak model, not a broken reference) is no
    problem: ``notes`` gets a line saying so, and the artifact is judged against it as usual.
    """
    problems = []
    if record is not None and tuple(record.input_size) != tuple(metadata.input_size):
        problems.append(
            f"the reference's training record ({record.path}) says {record.size_text()} but it is fed "
            f"{'x'.join(map(str, metadata.input_size))}: the reference, not the artifact, is wrong; "
            "export the model at its recorded size"
        )
    if reference_accuracy is None:
        return problems
    chance = 1 / max(metadata.num_classes, 1)
    weak_by_record = (
        record is not None
        and record.accuracy is not None
        and record.accuracy <= chance + CHANCE_MARGIN * (1 - chance)
        and abs(reference_accuracy - record.accuracy) <= RECORD_MARGIN
    )
    if weak_by_record and record is not None and record.accuracy is not None:
        if notes is not None:
            notes.append(
                f"the reference scores {100 * reference_accuracy:.2f}% top-1, near chance "
                f"({100 * chance:.2f}%), as its training record says ({100 * record.accuracy:.2f}%, "
                f"{record.accuracy_source}): a weak model, not a broken reference; train it longer for a useful "
                "model. The artifact is judged against it as usual"
            )
    elif reference_accuracy <= chance + CHANCE_MARGIN * (1 - chance):
        problems.append(
            f"the reference itself scores {100 * reference_accuracy:.2f}% top-1, chance level "
            f"({100 * chance:.2f}%): the reference, not the artifact, is wrong; check its input size and "
            "preprocessing against its training record"
        )
    elif (
        record is not None
        and record.accuracy is not None
        and reference_accuracy < record.accuracy - RECORD_MARGIN
    ):
        problems.append(
            f"the reference scores {100 * reference_accuracy:.2f}% top-1, far below the "
            f"{100 * record.accuracy:.2f}% of its record ({record.accuracy_source}): the reference, not the "
            "artifact, is wrong on these inputs"
        )
    return problems


def _runs_on(runner: Runner) -> str:
    return f"{runner.backend}, {runner.provider}" if runner.provider else runner.backend


def fidelity_level(artifact: Path) -> str | None:
    """The ONNX Runtime optimization level a precision ONNX is judged at, as its build's gate judged it
    (:func:`sedeploy.precision.fidelity_optimization_level`: ``disable`` for the tensorrt flavour, whose
    numerics are the graph's own, not ONNX Runtime's rewrites); None: the runner's default (an ``.ort.onnx``
    already optimized, a file without a manifest)."""
    manifest = matching_manifest(artifact)
    if manifest is None or manifest.device.get("optimization_level") == "all" or not manifest.recipe:
        return None
    from sedeploy.precision import fidelity_optimization_level

    level = fidelity_optimization_level(manifest.recipe)
    return level if level != "all" else None


def refuse_openvino_layers(artifact: Path) -> None:
    """The per-layer report reads Q/DQ ONNX graphs: an OpenVINO IR is refused in one line."""
    if artifact_backend(artifact) == "openvino":
        raise ConfigError(
            f"layers is not supported for OpenVINO IRs ({artifact.name} keeps its INT8 in OpenVINO's own form, "
            "not as Q/DQ ONNX); run it on the INT8 ONNX of the same model",
            params=("layers",),
        )


def layer_sources(artifact: Path, reference: Path | None, precision: str) -> tuple[Path, Path]:
    """The Q/DQ ONNX and the FP32 ONNX the per-layer report compares for ``artifact`` and verify's reference.

    An ``.ort.onnx`` (ONNX Runtime renamed and fused its nodes) and a TensorRT engine are reported through the
    precision ONNX they were built from; the FP32 side is ``reference`` when it is an ONNX file, else (weights,
    an architecture, none) the FP32 ONNX the artifact's manifest names. OpenVINO IRs are refused.
    """
    backend = artifact_backend(artifact)
    refuse_openvino_layers(artifact)
    if precision != "int8":
        raise ConfigError(
            f"layers reports the error of INT8 layers; {artifact.name} is {precision}", params=("layers",)
        )
    qdq = artifact.with_suffix(".onnx") if backend == "tensorrt" else portable_onnx_path(artifact)
    if not qdq.is_file() or is_optimized_onnx(qdq):
        raise ConfigError(
            f"layers reads the Q/DQ ONNX {artifact.name} was built from ({qdq.name}), which is not beside it",
            params=("layers",),
        )
    if reference is not None and artifact_backend(reference) == "onnxruntime" and reference.suffix == ".onnx":
        return qdq, reference
    return qdq, find_reference(artifact)


def verify(
    artifact: str | os.PathLike[str],
    reference: str | os.PathLike[str] | None = None,
    *,
    data: str | os.PathLike[str] | None = None,
    num: int | None = None,
    batch: int | None = None,
    min_cosine: float | None = None,
    max_top1_drop: float | None = None,
    device: str | None = None,
    verify_hash: bool = True,
    seed: int = 0,
    progress: bool = False,
    min_precision_share: float = DEFAULT_MIN_PRECISION_SHARE,
    runner_options: Mapping[str, Any] | None = None,
    layers: bool = False,
) -> VerifyReport:
    """Run ``artifact`` and its reference on the same inputs and judge the difference; see the module docstring.

    Returns the report whether it passed or not (``report.passed``); raises only
    when the verification itself cannot run. ``runner_options`` open the artifact
    as :func:`sedeploy.load` would with them (e.g. OpenVINO's ``float_type``).
    ``layers``: add the per-layer INT8 report on the first :data:`LAYER_IMAGES` inputs
    (:func:`layer_sources` says which files it compares).
    """
    started = time.perf_counter()
    if num is not None and num < 1:
        raise ConfigError(f"num must be at least 1, got {num}", params=("num",))
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}", params=("batch",))
    if min_cosine is not None and not -1 <= min_cosine <= 1:
        raise ConfigError(f"min_cosine must be between -1 and 1, got {min_cosine}")
    if max_top1_drop is not None and not 0 <= max_top1_drop <= 100:
        raise ConfigError(f"max_top1_drop is in percentage points, 0 to 100; got {max_top1_drop}")
    artifact_path = Path(artifact)
    if not artifact_path.exists():
        raise BadInputError(f"artifact {artifact_path} does not exist; check the path")
    if layers:
        refuse_openvino_layers(artifact_path)
    reference_path = Path(reference) if reference is not None else find_reference(artifact_path)
    precision = detect_precision(artifact_path)
    compared = (
        layer_sources(artifact_path, Path(reference) if reference else None, precision) if layers else None
    )
    defaults = DEFAULT_THRESHOLDS[precision]
    thresholds = replace(
        defaults,
        min_cosine=defaults.min_cosine if min_cosine is None else min_cosine,
        max_top1_drop=defaults.max_top1_drop if max_top1_drop is None else max_top1_drop,
    )

    options = dict(runner_options or {})
    notes: list[str] = []
    if artifact_backend(artifact_path) == "onnxruntime" and "optimization_level" not in options:
        level = fidelity_level(artifact_path)
        if level is not None:
            options["optimization_level"] = level
            notes.append(
                f"run at ONNX Runtime optimization level {level}, as its build's parity gate ran it "
                "(a tensorrt-flavour file's numerics are the graph's own)"
            )
    with load(artifact_path, device=device, verify_hash=verify_hash, **options) as candidate_runner:
        metadata = candidate_runner.metadata
        with _open_reference(reference_path, metadata, device) as reference_runner:
            metadata = metadata or reference_runner.metadata
            if metadata is None:
                raise BadInputError(
                    f"neither {artifact_path} nor {reference_path} has sedeploy metadata to read inputs with; "
                    "export the model with `sedeploy export`"
                )
            inputs = _read_inputs(data, metadata, num, seed, progress)
            finite_rows = np.all(np.isfinite(inputs.arrays.reshape(len(inputs.arrays), -1)), axis=1)
            nonfinite = int(np.sum(~finite_rows))
            if nonfinite:
                logger.warning("%d input(s) hold NaN or infinity; left out of the comparison", nonfinite)
            arrays = inputs.arrays[finite_rows]
            if not len(arrays):
                raise BadInputError(
                    f"all {len(inputs.arrays)} inputs hold NaN or infinity; nothing to compare"
                )
            chunk = batch or min(DEFAULT_BATCH, candidate_runner.input_spec.max_batch or DEFAULT_BATCH)
            got = _run(candidate_runner, arrays, chunk, "artifact", progress)
            expected = _run(reference_runner, arrays, chunk, "reference", progress)
            descriptions = (_runs_on(candidate_runner), _runs_on(reference_runner))
            record: TrainingRecord | None = getattr(reference_runner, "record", None)
    if got.shape != expected.shape:
        raise BadInputError(
            f"{artifact_path} gives logits of shape {got.shape[1:]} but {reference_path} gives {expected.shape[1:]}; "
            "compare an artifact with the model it was built from"
        )
    comparison = compare_logits(expected, got)
    labels = inputs.labels[finite_rows] if inputs.labels is not None else None
    reference_accuracy = artifact_accuracy = accuracy_drop = None
    if labels is not None:
        reference_accuracy, artifact_accuracy = top1_accuracy(expected, labels), top1_accuracy(got, labels)
        accuracy_drop = 100 * (reference_accuracy - artifact_accuracy)

    failures = _reference_problems(record, metadata, reference_accuracy, notes)
    verdict = judge(comparison, thresholds, accuracy_drop=accuracy_drop, top1_gated=not inputs.synthetic)
    failures += [
        "the artifact's logits hold NaN or infinity" if failure == "non-finite logits" else failure
        for failure in verdict.failures
    ]
    top1_gate = (
        "accuracy drop"
        if accuracy_drop is not None
        else "not gated"
        if inputs.synthetic
        else "top-1 changes"
        if top1_rule_applies(comparison.samples, thresholds.max_top1_drop)
        else "not gated (too few images to resolve it)"
    )
    precision_audit = _audit(artifact_path, reference_path, precision, min_precision_share, failures)
    layer_report = None
    if compared is not None:
        from sedeploy.measure.layers import layer_errors

        layer_report = layer_errors(*compared, arrays[:LAYER_IMAGES])
    report = VerifyReport(
        artifact=str(artifact_path),
        artifact_runner=descriptions[0],
        reference=str(reference_path),
        reference_runner=descriptions[1],
        precision=precision,
        inputs=inputs.description,
        samples=len(arrays),
        nonfinite_inputs=nonfinite,
        comparison=comparison,
        mean_abs_error=comparison.mean_abs_error,
        top5_agreement=comparison.top5_agreement,
        reference_accuracy=reference_accuracy,
        artifact_accuracy=artifact_accuracy,
        accuracy_drop=accuracy_drop,
        top1_gate=top1_gate,
        thresholds=thresholds,
        failures=tuple(failures),
        skipped_images=inputs.skipped,
        seconds=time.perf_counter() - started,
        precision_audit=precision_audit,
        notes=tuple(notes) + verdict.notes,
        layer_report=layer_report,
    )
    logger.info("verify %s: %s", artifact_path, "pass" if report.passed else "; ".join(failures))
    return report
