"""A quantization-aware export as a build's source: INT8 as it is, judged against its float twin.

A QAT export's scales were learned, so nothing is calibrated: the build takes the Q/DQ file as it is and gates it
against the FP32 graph of the same fine-tuned weights (not the pre-QAT export: the weights moved) on the
fine-tuning's validation images, both named by the export's ``sedeploy.qat`` record. A file that misses the gate
is not repaired (a repair would re-calibrate what was learned): fine-tuning again is the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.building.gate import GATE_MAX_IMAGES, GateImages, check_on_onnxruntime, parity_gate
from sedeploy.building.options import BuildOptions
from sedeploy.building.source import SourceModel
from sedeploy.compare import Comparison
from sedeploy.data import load_image_set, preprocessing_for
from sedeploy.data.cache import cache_dir
from sedeploy.errors import BadInputError
from sedeploy.files import sha256_of_file
from sedeploy.precision import fidelity_optimization_level
from sedeploy.progress import stage

QAT_FIX = "fine-tuning longer (train --qat with more epochs) or from a better float checkpoint"
"""What mends a QAT export that misses its gate: more fine-tuning, never a re-calibration."""
NOT_REPAIRED = {"status": "not run", "why": "a quantization-aware export keeps its learned scales"}


@dataclass(frozen=True)
class QatCheck:
    """What a QAT export is judged on: its float twin, the images, and the recipe its manifest records."""

    reference: Path
    images: GateImages
    recipe: dict[str, Any]


def qat_check(source: SourceModel, options: BuildOptions, progress: bool = False) -> QatCheck:
    """The float twin (checked by its sha256) and the gate's images: ``calib_dir`` when given, else the
    fine-tuning's validation images as its record names them (refused when they moved or changed)."""
    export = source.qat
    assert export is not None
    reference = export.float_model_path(source.path)
    if reference is None or not reference.is_file():
        raise BadInputError(
            f"{source.path}: its float model {export.float_model or '(unnamed)'} (the gate's reference, the same "
            "fine-tuned weights in FP32) is not beside it; export the QAT run again (export_qat) into one folder"
        )
    if export.float_model_sha256 and sha256_of_file(reference) != export.float_model_sha256:
        raise BadInputError(
            f"{reference} changed since {source.path.name} was exported; export the QAT run again (export_qat)"
        )
    preprocessing, channels = preprocessing_for(source.metadata, **options.preprocessing_overrides)
    if options.calib_dir is not None:
        given = load_image_set(
            options.calib_dir,
            preprocessing,
            channels,
            limit=min(options.calib_size, GATE_MAX_IMAGES),
            seed=options.seed,
            cache_dir=cache_dir(),
            progress=progress,
        )
        images = GateImages(None, given.images, "given", held_out=True)
    else:
        images = GateImages(
            None, _validation_images(source, preprocessing, channels, progress), "validation", True
        )
    recipe = {
        **export.recipe,
        "qat": True,
        "checkpoint_sha256": export.checkpoint_sha256,
        "float_model": export.float_model,
        "float_model_sha256": export.float_model_sha256,
    }
    return QatCheck(reference, images, recipe)


def _validation_images(source: SourceModel, preprocessing: Any, channels: int, progress: bool) -> np.ndarray:
    assert source.qat is not None
    validation = source.qat.validation
    if not validation:
        raise BadInputError(
            f"{source.path} names no validation images of its fine-tuning; give calib_dir (held-out images like "
            "the model's inputs) to judge it on"
        )
    folder = Path(validation["folder"])
    if not folder.is_dir():
        raise BadInputError(
            f"the fine-tuning's validation images ({folder}) are not here; give calib_dir (held-out images like "
            "the model's inputs) to judge the QAT export on",
            params=("calib_dir",),
        )
    found = load_image_set(folder, preprocessing, channels, cache_dir=cache_dir(), progress=progress)
    recorded = validation.get("dataset_sha256")
    if recorded and found.report.dataset_sha256 != recorded:
        raise BadInputError(
            f"{folder} changed since the fine-tuning (its images differ from the record); give calib_dir "
            "(held-out images) to judge the QAT export on",
            params=("calib_dir",),
        )
    files = validation.get("files")
    if files is None:
        return found.images[:GATE_MAX_IMAGES]
    row_of = {name: row for row, name in enumerate(found.files)}
    missing = [name for name in files if name not in row_of]
    if missing:
        raise BadInputError(
            f"{len(missing)} validation image(s) of the fine-tuning are not readable in {folder} ({missing[0]}, ...); "
            "give calib_dir (held-out images) to judge the QAT export on",
            params=("calib_dir",),
        )
    return found.images[[row_of[name] for name in files[:GATE_MAX_IMAGES]]]


def check_qat_on_onnxruntime(
    source: SourceModel, check: QatCheck, options: BuildOptions, progress: bool = False
) -> tuple[Comparison, str | None]:
    """The QAT file against its float twin on ONNX Runtime, and the gate's note (None: passed; a miss raises
    unless ``options.gate`` is off)."""
    with stage(f"build: int8 (quantization-aware) {check.images.describe()}", progress):
        fidelity = check_on_onnxruntime(
            check.reference,
            source.path,
            check.images.check,
            source.input_name,
            fidelity_optimization_level(check.recipe),
        )
    return fidelity, qat_gate(fidelity, options)


def qat_gate(fidelity: Comparison, options: BuildOptions) -> str | None:
    """verify's INT8 thresholds on a QAT export: no repair, the fix named is more fine-tuning."""
    return parity_gate("int8", fidelity, options, None, fix=QAT_FIX)


def qat_recipe(check: QatCheck, gate_note: str | None) -> dict[str, Any]:
    """The manifest's recipe of a QAT build: the fine-tuning's recipe, ``qat: true``, the gate and its images."""
    return {
        **check.recipe,
        "repair": NOT_REPAIRED,
        "parity_gate": "passed" if gate_note is None else "failed, published with gate=False",
        "parity_check": check.images.to_dict(),
    }
