"""The precision ONNX a build writes: FP16-typed or INT8 Q/DQ calibrated on the image set, checked by the gate."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from sedeploy.artifacts.metadata import ModelMetadata
from sedeploy.building.gate import check_on_onnxruntime, gate_failures, gate_images, parity_gate
from sedeploy.building.options import DEFAULT_CALIBRATION_DIR, FP16_MIN_COSINE, BuildOptions
from sedeploy.building.qat import check_qat_on_onnxruntime, qat_check, qat_recipe
from sedeploy.building.repair import NOT_NEEDED, RepairJob, repair_onnx, repaired_recipe, worst_modules
from sedeploy.building.source import SourceModel, random_images
from sedeploy.compare import Comparison
from sedeploy.data import ImageSet, load_image_set, preprocessing_for
from sedeploy.data.cache import cache_dir
from sedeploy.errors import BadInputError
from sedeploy.measure.sweep import sweep_calibration
from sedeploy.precision import (
    DEFAULT_CALIBRATION_METHOD,
    CalibrationRanges,
    Int8Recipe,
    PrecisionError,
    calibrate_cached,
    convert_fp16,
    fidelity_optimization_level,
    quantize_int8,
)
from sedeploy.progress import stage

logger = logging.getLogger(__name__)


def calibration_set_for(source: SourceModel | Path, options: BuildOptions, progress: bool) -> ImageSet:
    """The calibration images as build-engine reads them: the model's own preprocessing, the options' folder."""
    model_path = source.path if isinstance(source, SourceModel) else Path(source)
    described = source.metadata if isinstance(source, SourceModel) else model_path
    preprocessing, channels = preprocessing_for(described, **options.preprocessing_overrides)
    folder = options.calib_dir or DEFAULT_CALIBRATION_DIR
    if options.calib_dir is None and not DEFAULT_CALIBRATION_DIR.is_dir():
        raise BadInputError(
            f"{options.precision} needs calibration images: give calib_dir (a folder of images like the model's "
            f"inputs); the default folder {DEFAULT_CALIBRATION_DIR}/ is not here",
            params=("calib_dir",),
        )
    return load_image_set(
        folder,
        preprocessing,
        channels,
        limit=options.calib_size,
        seed=options.seed,
        cache_dir=cache_dir(),
        progress=progress,
    )


@dataclass(frozen=True)
class PrecisionFile:
    """What :func:`make_precision_file` wrote and checked."""

    recipe: dict[str, Any]
    calibration: dict[str, Any] | None
    fidelity: Comparison | None
    gate_note: str | None
    """The parity gate's note (None: passed)."""
    repaired: str | None = None
    """The INT8 repair in one line (None: no repair ran)."""


def make_precision_file(
    source: SourceModel,
    staged_path: Path | None,
    proto: onnx.ModelProto,
    metadata: ModelMetadata | None,
    options: BuildOptions,
    target: str,
    input_name: str,
    calibration_set: ImageSet | None,
    progress: bool,
) -> PrecisionFile:
    """Write the FP16 or INT8 graph to ``staged_path`` and check it on ONNX Runtime against FP32.

    An INT8 file that misses the gate is repaired (:mod:`sedeploy.building.repair`) unless ``options.repair``
    or ``options.gate`` is off. Without a ``staged_path`` (FP32, or TensorRT's implicit INT8) nothing is written;
    a QAT export asked for INT8 is checked as it is (:mod:`sedeploy.building.qat`).
    """
    if source.builds_qat and options.precision == "int8":
        check = qat_check(source, options, progress)
        fidelity, note = check_qat_on_onnxruntime(source, check, options, progress)
        return PrecisionFile(qat_recipe(check, note), None, fidelity, note)
    if staged_path is None:
        return PrecisionFile({}, None, None, None)
    model_path = source.path
    split = gate_images(
        calibration_set.images if calibration_set is not None else None,
        lambda: random_images(proto, metadata),
    )
    calibration: dict[str, Any] | None = None
    int8: Int8Recipe | None = None
    ranges: CalibrationRanges | None = None
    if options.precision == "fp16":
        with stage("build: FP16 conversion", progress):
            recipe = convert_fp16(source, staged_path, options.fp16_block_list)
    else:
        assert calibration_set is not None and split.ranges is not None
        ranges_images = split.ranges
        int8 = Int8Recipe(
            flavour=target,
            method=DEFAULT_CALIBRATION_METHOD if options.calib_method == "sweep" else options.calib_method,
            percentile=options.percentile,
            quantize_se=options.quantize_se,
            high_precision=options.high_precision,
            every_tensor_int8=options.every_tensor_int8,
        )
        sweep: dict[str, Any] | None = None
        if options.calib_method == "sweep":
            assert options.sweep_data is not None
            preprocessing, channels = preprocessing_for(source.metadata, **options.preprocessing_overrides)
            held_out = load_image_set(options.sweep_data, preprocessing, channels, progress=progress)
            report = sweep_calibration(
                source,
                ranges_images,
                input_name,
                calibration_set.report.dataset_sha256,
                held_out.images,
                held_out.labels,
                base=int8,
                progress=progress,
            )
            int8, sweep = report.best.recipe, report.to_dict()
        ranges, reused = calibrate_cached(
            source,
            ranges_images,
            input_name,
            int8,
            calibration_set.report.dataset_sha256,
            recalibrate=options.recalibrate,
            progress=progress,
        )
        with stage("build: INT8 Q/DQ", progress):
            recipe = quantize_int8(source, staged_path, ranges, int8, ranges_images)
        calibration = {
            "method": int8.method,
            "percentile": int8.percentile if int8.method == "percentile" else None,
            "images": len(ranges_images),
            "found": calibration_set.report.found,
            "skipped": [{"path": s.path, "reason": s.reason} for s in calibration_set.report.skipped],
            "dataset_sha256": calibration_set.report.dataset_sha256,
            "folder": calibration_set.report.folder,
            "reused": reused,
            "tensors": len(ranges.ranges),
            "parameters": int8.calibration_parameters(),
            "sweep": sweep,
        }
    with stage(f"build: {options.precision} {split.describe()}", progress):
        fidelity = check_on_onnxruntime(
            model_path, staged_path, split.check, input_name, fidelity_optimization_level(recipe)
        )
    repairs = int8 is not None and options.gate and options.repair
    if not fidelity.finite and not repairs:
        raise PrecisionError(f"the {options.precision} graph gives non-finite logits; nothing was written")
    if options.precision == "fp16" and fidelity.mean_cosine < FP16_MIN_COSINE:
        raise PrecisionError(
            f"FP16 logits drift from FP32 (mean cosine {fidelity.mean_cosine:.5f} < {FP16_MIN_COSINE}); "
            "keep more ops in FP32 with fp16_block_list"
        )
    calibrated_on = calibration_set.report.used if calibration_set else None
    repaired: str | None = None
    failing = int8 is not None and bool(gate_failures("int8", fidelity))
    if int8 is not None:
        recipe = {**recipe, "repair": {"status": "not run", "why": "gate=False"} if failing else NOT_NEEDED}
    if failing and options.gate:
        assert int8 is not None
        assert calibration_set is not None
        job = RepairJob(
            source,
            int8,
            ranges,
            split,
            calibration_set.report.dataset_sha256,
            options,
            fidelity,
            staged_path,
            progress,
        )
        if not options.repair:
            parity_gate("int8", fidelity, options, calibrated_on, worst_modules(job))
        with tempfile.TemporaryDirectory(prefix="sedeploy-repair-") as work:
            built, repair = repair_onnx(job, staged_path, Path(work))
        if built is None:
            parity_gate("int8", fidelity, options, calibrated_on, repair.worst_modules, repair.reason)
        else:
            recipe = repaired_recipe(built, repair)
            repaired = repair.summary()
            logger.info("repaired: %s", repaired)
            with stage(f"build: repaired int8 {split.describe()}", progress):
                fidelity = check_on_onnxruntime(
                    model_path, staged_path, split.check, input_name, fidelity_optimization_level(recipe)
                )
    gate_note = parity_gate(options.precision, fidelity, options, calibrated_on)
    recipe = {
        **recipe,
        "parity_gate": "passed" if gate_note is None else "failed, published with gate=False",
        "parity_check": split.to_dict(),
    }
    return PrecisionFile(recipe, calibration, fidelity, gate_note, repaired)
