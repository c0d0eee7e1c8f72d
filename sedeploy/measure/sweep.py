"""Calibration sweep: try each method (and percentile) with the SE path float and quantized, keep the most faithful.

Each candidate is calibrated on the calibration set (cached ranges reused),
quantized, and run on a held-out set against the FP32 model on ONNX Runtime, at
the level that keeps its graph's numerics (:func:`fidelity_optimization_level`).
With labels the candidates rank by accuracy, else by top-1 agreement with FP32;
ties go to the higher worst-case, then mean, cosine.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.compare import Comparison, compare_logits, top1_accuracy
from sedeploy.errors import BadInputError
from sedeploy.precision._common import ModelInput
from sedeploy.precision._common import model_path as source_path
from sedeploy.precision.calibration import calibrate_cached
from sedeploy.precision.int8 import quantize_int8
from sedeploy.precision.recipe import Int8Recipe, fidelity_optimization_level

logger = logging.getLogger(__name__)

SWEEP_PERCENTILES = (99.9, 99.99, 99.999)


def sweep_candidates(base: Int8Recipe) -> list[Int8Recipe]:
    """minmax, entropy and percentile (99.9, 99.99, 99.999), each with the SE path float and quantized."""
    methods: list[dict[str, Any]] = [
        {"method": "minmax"},
        {"method": "entropy"},
        *({"method": "percentile", "percentile": value} for value in SWEEP_PERCENTILES),
    ]
    return [
        dataclasses.replace(base, quantize_se=quantize_se, **method)
        for method in methods
        for quantize_se in (False, True)
    ]


@dataclass(frozen=True)
class SweepRow:
    """One candidate's recipe and fidelity on the held-out set."""

    recipe: Int8Recipe
    fidelity: Comparison
    accuracy: float | None
    reference_accuracy: float | None
    reused_cache: bool

    @property
    def label(self) -> str:
        method = self.recipe.method
        if method == "percentile":
            method = f"percentile {self.recipe.percentile:g}"
        return f"{method}, SE {'quantized' if self.recipe.se_quantized else 'float'}"

    def rank(self) -> tuple[float, float, float]:
        first = self.accuracy if self.accuracy is not None else self.fidelity.top1_agreement
        return (first, self.fidelity.min_cosine, self.fidelity.mean_cosine)

    def to_dict(self) -> dict[str, Any]:
        drop = (
            None
            if self.accuracy is None or self.reference_accuracy is None
            else round(100 * (self.reference_accuracy - self.accuracy), 3)
        )
        return {
            "candidate": self.label,
            "calibration_parameters": self.recipe.calibration_parameters(),
            "quantize_se": self.recipe.se_quantized,
            "accuracy": self.accuracy,
            "accuracy_drop_points": drop,
            "top1_agreement": self.fidelity.top1_agreement,
            "mean_cosine": self.fidelity.mean_cosine,
            "min_cosine": self.fidelity.min_cosine,
            "reused_cache": self.reused_cache,
        }


@dataclass(frozen=True)
class SweepReport:
    """Every candidate's fidelity and the one kept; recorded in the manifest as ``calibration_sweep``."""

    rows: tuple[SweepRow, ...]
    held_out: int
    labelled: bool

    @property
    def best(self) -> SweepRow:
        return max(self.rows, key=lambda row: row.rank())

    def to_dict(self) -> dict[str, Any]:
        return {
            "held_out_images": self.held_out,
            "ranked_by": "accuracy" if self.labelled else "top-1 agreement with fp32",
            "kept": self.best.label,
            "candidates": [row.to_dict() for row in self.rows],
        }

    def to_text(self) -> str:
        first = "accuracy (drop)" if self.labelled else "agreement"
        lines = [f"{'candidate':<32} {first:>17} {'mean cos':>9} {'min cos':>9}"]
        best = self.best
        for row in self.rows:
            if row.accuracy is not None and row.reference_accuracy is not None:
                figure = f"{100 * row.accuracy:.2f}% ({100 * (row.reference_accuracy - row.accuracy):+.2f})"
            else:
                figure = f"{100 * row.fidelity.top1_agreement:.2f}%"
            mark = "  <- kept" if row is best else ""
            lines.append(
                f"{row.label:<32} {figure:>17} {row.fidelity.mean_cosine:>9.5f} {row.fidelity.min_cosine:>9.5f}{mark}"
            )
        lines.append(f"on {self.held_out} held-out images; kept {best.label}")
        return "\n".join(lines)


def sweep_calibration(
    model: ModelInput,
    calibration_images: np.ndarray,
    input_name: str,
    dataset_sha256: str,
    held_out: np.ndarray,
    labels: np.ndarray | None = None,
    base: Int8Recipe | None = None,
    candidates: Sequence[Int8Recipe] | None = None,
    progress: bool = False,
) -> SweepReport:
    """Measure every candidate recipe on ``held_out`` against FP32 and return the ranked report."""
    from sedeploy.backends import onnxruntime as ort_backend

    if len(held_out) == 0:
        raise BadInputError(
            "the calibration sweep needs held-out images to measure on; give a folder with data"
        )
    candidates = list(candidates or sweep_candidates(base or Int8Recipe()))
    batch = np.ascontiguousarray(held_out, dtype=np.float32)
    reference = ort_backend.create_session(source_path(model), ["CPUExecutionProvider"]).run(
        None, {input_name: batch}
    )[0]
    reference_accuracy = top1_accuracy(reference, labels) if labels is not None else None
    iterator: Any = candidates
    if progress:
        from sedeploy.progress import progress_bar

        iterator = progress_bar(candidates, desc="calibration sweep", unit="candidate")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sedeploy-sweep-") as folder:
        for index, recipe in enumerate(iterator):
            ranges, reused = calibrate_cached(model, calibration_images, input_name, recipe, dataset_sha256)
            candidate_path = Path(folder) / f"candidate-{index}.onnx"
            built = quantize_int8(model, candidate_path, ranges, recipe)
            session = ort_backend.create_session(
                candidate_path,
                ["CPUExecutionProvider"],
                optimization_level=fidelity_optimization_level(built),
            )
            logits = session.run(None, {input_name: batch})[0]
            rows.append(
                SweepRow(
                    recipe=recipe,
                    fidelity=compare_logits(reference, logits),
                    accuracy=top1_accuracy(logits, labels) if labels is not None else None,
                    reference_accuracy=reference_accuracy,
                    reused_cache=reused,
                )
            )
            logger.info("sweep %s: %s", rows[-1].label, rows[-1].fidelity.to_text())
    return SweepReport(rows=tuple(rows), held_out=len(held_out), labelled=labels is not None)
