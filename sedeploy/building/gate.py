"""The build's own check: the precision file against FP32 on the gate's images, judged by verify's thresholds."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.building.options import FP16_MIN_COSINE, BuildOptions
from sedeploy.compare import DEFAULT_THRESHOLDS, Comparison, compare_logits, judge
from sedeploy.data import ImageSet
from sedeploy.precision import (
    PrecisionError,
)

logger = logging.getLogger(__name__)

GATE_MAX_IMAGES = 300
"""The gate judges on every calibration image up to this many: enough that one flipped prediction (1/300 =
0.33 pp) cannot decide a 1-point top-1 rule."""
HOLD_OUT_FROM = 500
"""From this many calibration images on, the gate's images are held out from the ranges (a check on the images
the ranges were computed on is optimistic); below it the gate judges in-sample and says so."""
GATE_BATCH = 32
"""Images per call while checking: bounded memory for deep models at full size."""


@dataclass(frozen=True)
class GateImages:
    """The images a build calibrates on and the ones its parity gate judges on, and how they relate."""

    ranges: np.ndarray | None
    """What calibration computes ranges on (None: no calibration set)."""
    check: np.ndarray
    kind: str
    """``calibration``, ``random`` (no image set: FP16 checked on random inputs), ``validation`` (a QAT export:
    its fine-tuning's validation images) or ``given`` (a QAT export judged on ``calib_dir``)."""
    held_out: bool

    def describe(self) -> str:
        """``parity on 300 calibration images, in-sample`` and the like, as the build prints and records it."""
        if self.kind == "random":
            return f"parity on {len(self.check)} random inputs"
        if self.kind == "validation":
            return f"parity on {len(self.check)} validation images of the fine-tuning"
        if self.kind == "given":
            return f"parity on {len(self.check)} images of calib_dir"
        where = "held out from the ranges" if self.held_out else "in-sample"
        return f"parity on {len(self.check)} calibration images, {where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": len(self.check),
            "kind": self.kind,
            "held_out": self.held_out,
            "text": self.describe(),
        }


def gate_images(calibration_images: np.ndarray | None, random_inputs: Callable[[], np.ndarray]) -> GateImages:
    """Split a calibration set between ranges and gate (:data:`HOLD_OUT_FROM`, :data:`GATE_MAX_IMAGES`).

    Held out: the last ``min(GATE_MAX_IMAGES, n // 3)`` images judge, the rest calibrate; in-sample: the first
    ``GATE_MAX_IMAGES`` of all of them judge. Without images, ``random_inputs()``.
    """
    if calibration_images is None or len(calibration_images) == 0:
        return GateImages(None, random_inputs(), "random", held_out=False)
    count = len(calibration_images)
    if count >= HOLD_OUT_FROM:
        held = min(GATE_MAX_IMAGES, count // 3)
        return GateImages(
            calibration_images[: count - held], calibration_images[count - held :], "calibration", True
        )
    return GateImages(calibration_images, calibration_images[:GATE_MAX_IMAGES], "calibration", held_out=False)


def _in_chunks(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            run(np.ascontiguousarray(images[i : i + GATE_BATCH], dtype=np.float32))
            for i in range(0, len(images), GATE_BATCH)
        ]
    )


def gate_failures(precision: str, fidelity: Comparison) -> tuple[str, ...]:
    """Why ``fidelity`` misses verify's thresholds for ``precision`` (empty: the gate passes), by the one judge
    (:func:`sedeploy.compare.judge`): a top-1 rule the gate's images cannot resolve is not applied (logged)."""
    verdict = judge(fidelity, DEFAULT_THRESHOLDS[precision])
    for note in verdict.notes:
        logger.info("parity gate: %s", note)
    return verdict.failures


def parity_gate(
    precision: str,
    fidelity: Comparison,
    options: BuildOptions,
    calibrated_on: int | None,
    worst_layers: Sequence[str] = (),
    repair_failed: str | None = None,
    fix: str | None = None,
) -> str | None:
    """Fail (or, with ``gate=False``, note) an FP16/INT8 file whose parity misses verify's thresholds.

    ``worst_layers``: the INT8 file's worst layers by PyTorch module (the per-layer report), named in the
    refusal; ``repair_failed``: why the INT8 repair could not mend it (None: no repair ran); ``fix``: what to
    try instead of the usual advice (a QAT export is mended by fine-tuning, not by calibration).
    """
    failures = gate_failures(precision, fidelity)
    if not failures:
        return None
    advice_given = fix is not None
    if fix is None and precision == "int8" and options.every_tensor_int8:  # no layer may go float: fine-tune
        fix = (
            "quantization-aware fine-tuning for it (train qat with every_tensor_int8), another calib_method, or "
            f"more calibration images (calib_size; {calibrated_on} used)"
        )
    elif fix is None:
        fix = (
            "quantize_se=False (keeps the SE gate in float), another calib_method, or more calibration images "
            f"(calib_size; {calibrated_on} used)"
            if precision == "int8"
            else "more ops in float with fp16_block_list"
        )
    problem = f"{precision} parity below verify's thresholds ({'; '.join(failures)})"
    if not options.gate:
        return f"{problem}; published anyway (gate=False, recorded in the manifest)"
    worst = (
        f"; its worst layers: {', '.join(worst_layers)} (verify's per-layer report lists them all)"
        if worst_layers
        else ""
    )
    if repair_failed is not None:
        raise PrecisionError(
            f"{problem}, and the repair could not mend it ({repair_failed}): nothing was published{worst}; try "
            f"{'' if options.every_tensor_int8 else 'a lower min_int8_mac_share, '}{fix}, or gate=False to publish "
            "anyway"
        )
    if precision == "int8" and not options.repair and not advice_given:
        fix = f"repair=True (cross-layer equalization, the fewest float layers), {fix}"
    raise PrecisionError(
        f"{problem}: nothing was published{worst}; try {fix}, or gate=False to publish anyway"
    )


def check_on_onnxruntime(
    reference_path: Path,
    candidate_path: Path,
    images: np.ndarray,
    input_name: str,
    optimization_level: str = "all",
) -> Comparison:
    reference = ort_backend.create_session(reference_path, ["CPUExecutionProvider"])
    candidate = ort_backend.create_session(
        candidate_path, ["CPUExecutionProvider"], optimization_level=optimization_level
    )
    return compare_logits(
        _in_chunks(lambda batch: reference.run(None, {input_name: batch})[0], images),
        _in_chunks(lambda batch: candidate.run(None, {input_name: batch})[0], images),
    )


def check_on_openvino(
    reference_path: Path, xml: Path, images: np.ndarray, input_name: str, precision: str = "fp32"
) -> Comparison:
    """Run the staged IR as its manifest says (float type, hint) against FP32 on ONNX Runtime.

    Non-finite logits are refused; an FP16 or BF16 IR must also keep the FP16 gate (mean cosine
    :data:`FP16_MIN_COSINE`) and the top-1 agreement :data:`~sedeploy.backends.openvino.FLOAT_MIN_TOP1`.
    """
    from sedeploy.backends.openvino import FLOAT_MIN_TOP1, OpenVinoRunner

    reference = ort_backend.create_session(reference_path, ["CPUExecutionProvider"])
    runner = OpenVinoRunner(xml)
    with runner:
        candidate = _in_chunks(runner, images)
    fidelity = compare_logits(
        _in_chunks(lambda batch: reference.run(None, {input_name: batch})[0], images), candidate
    )
    if not fidelity.finite:
        raise PrecisionError(f"the OpenVINO IR {xml.name} gives non-finite logits; nothing usable was built")
    if precision in ("fp16", "bf16") and (
        fidelity.mean_cosine < FP16_MIN_COSINE or fidelity.top1_agreement < FLOAT_MIN_TOP1
    ):
        raise PrecisionError(
            f"the {precision} IR run in {runner.float_type} drifts from FP32 (mean cosine {fidelity.mean_cosine:.5f}, "
            f"need {FP16_MIN_COSINE}; top-1 agreement {100 * fidelity.top1_agreement:.1f}%, need "
            f"{100 * FLOAT_MIN_TOP1:.0f}%); build precision='fp32' or 'int8' instead"
        )
    return fidelity


SMALL_CALIBRATION_SET = 300
"""Fewer calibration images than this give ranges that vary from one sample to the next: said with a warning."""


def calibration_notes(calibration_set: ImageSet | None) -> tuple[str, ...]:
    if calibration_set is None or calibration_set.report.used >= SMALL_CALIBRATION_SET:
        return ()
    note = (
        f"calibrated on {calibration_set.report.used} images; a few hundred or more "
        f"(>= {SMALL_CALIBRATION_SET}) give steadier INT8 ranges"
    )
    logger.info(note)  # the build's notes carry it to the user (build-engine prints them)
    return (note,)
