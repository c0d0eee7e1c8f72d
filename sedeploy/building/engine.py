"""A build for one concrete backend: source -> precision file -> backend artifact, gated (never ``auto``)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from sedeploy._version import __version__
from sedeploy.artifacts import naming
from sedeploy.artifacts.external_data import external_data_files
from sedeploy.artifacts.manifest import (
    BuildManifest,
    manifest_path,
)
from sedeploy.artifacts.naming import ARTIFACT_BACKENDS
from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.backends.audit import (
    PrecisionAudit,
    format_shares,
    gate_applies,
)
from sedeploy.backends.tensorrt.compat import resolve_batch_profile
from sedeploy.building.gate import calibration_notes
from sedeploy.building.options import BuildOptions, BuildResult, choose_backend
from sedeploy.building.precision_file import calibration_set_for, make_precision_file
from sedeploy.building.publish import audit_engine, build_openvino, check_output_suffix, publish_onnxruntime
from sedeploy.building.source import SourceModel, refuse_what_cannot_apply
from sedeploy.data import ImageSet, listed_images_among
from sedeploy.errors import ConfigError
from sedeploy.files import check_writable, folder_lock, refuse_output_over_input, temp_path_beside
from sedeploy.progress import stage

logger = logging.getLogger(__name__)


def refuse_before_building(source: SourceModel, options: BuildOptions, output: str | Path | None) -> None:
    """Everything a build refuses before any work: options the source cannot honour, an unwritable output,
    a bad TensorRT profile (a usage error even where TensorRT is missing)."""
    refuse_what_cannot_apply(source, options)
    if output is not None:
        refuse_output_over_inputs(source, options, output)
        check_writable(output)
    if options.tensorrt.profile is not None:
        resolve_batch_profile(
            options.tensorrt.profile, source.metadata.max_batch if source.metadata else None
        )


def refuse_output_over_inputs(source: SourceModel, options: BuildOptions, output: str | Path) -> None:
    """An ``output`` that is one of the build's inputs (the source, its manifest or external data, a
    calibration or held-out image) is refused before any work: a build never writes over what it reads."""
    folder = source.path.parent
    refuse_output_over_input(
        [("output", output)],
        [
            ("the source model", source.path),
            ("the source model's manifest", manifest_path(source.path)),
            *(
                ("the source model's external data", folder / name)
                for name in external_data_files(source.proto, source.path)
            ),
            *(("a calibration image", path) for path in _images_among(options.calib_dir, output)),
            *(("a held-out image", path) for path in _images_among(options.sweep_data, output)),
        ],
    )


def _images_among(folder: Path | None, output: str | Path) -> list[Path]:
    return list(listed_images_among(folder, [output])) if folder is not None else []


def build_artifact(
    source: SourceModel,
    options: BuildOptions,
    output: str | Path | None = None,
    progress: bool = False,
    started: float | None = None,
) -> BuildResult:
    """One build of ``source``: refusals first, then the backend (``auto`` without measuring: TensorRT where it
    runs, else ONNX Runtime; the measured choice is :func:`sedeploy.build.build_engine`'s), then
    :func:`build_for_backend`."""
    started = time.perf_counter() if started is None else started
    refuse_before_building(source, options, output)
    backend, backend_reason = choose_backend(options.backend)
    if backend != "tensorrt" and options.tensorrt.given():
        raise ConfigError(
            f"TensorRT options {', '.join(options.tensorrt.given())} cannot apply: this build runs on {backend} "
            f"({backend_reason}); drop them, or build with backend tensorrt where TensorRT and a GPU are present",
            params=("backend", *options.tensorrt.given()),
        )
    if options.backend == "auto" and backend == "onnxruntime":
        from sedeploy.measure.auto import why_not_searched

        not_searched = why_not_searched(options.onnx_recipe_options_given(), output is not None)
        if not_searched is not None:
            backend_reason = f"{backend_reason}; {not_searched}"
    return build_for_backend(source, options, backend, backend_reason, output, progress, started)


def build_for_backend(
    source: SourceModel,
    options: BuildOptions,
    backend: str,
    backend_reason: str,
    output: str | Path | None = None,
    progress: bool = False,
    started: float | None = None,
) -> BuildResult:
    """Build ``options.precision`` for the concrete ``backend`` from ``source``, gated, and publish it.

    Writes the precision ONNX (``model.fp16.onnx``, ``model.int8-cpu.onnx``, ...) beside the source unless
    ``output`` names it, then the backend's artifact, and a manifest beside each. FP32 on ONNX Runtime writes
    only the optimized graph. The caller (:func:`sedeploy.build.build_engine`) has read the source, refused what
    cannot apply and chosen the backend; ``auto`` never reaches here.
    """
    if backend not in ARTIFACT_BACKENDS:
        raise ConfigError(f"build_for_backend takes a concrete backend, not {backend!r}", params=("backend",))
    started = time.perf_counter() if started is None else started
    model_path = source.path
    proto, metadata = source.proto, source.metadata
    if output is not None:
        check_output_suffix(Path(output), backend)
    logger.info("backend %s (%s)", backend, backend_reason)
    input_name = source.input_name
    qat = source.builds_qat and options.precision == "int8"  # INT8 as it is: learned scales, no calibration
    writes_precision_file = options.precision != "fp32" and not options.implicit_int8 and not qat
    optimized_output = output is not None and naming.is_optimized_onnx(Path(output))
    if optimized_output and backend == "onnxruntime" and writes_precision_file:
        raise ConfigError(
            f"output {output} names ONNX Runtime's optimized graph, but for {options.precision} output names the "
            "precision ONNX (the optimized graph is written beside it as its .ort.onnx); give output "
            f"{naming.portable_onnx_path(Path(str(output)))}",
            params=("output",),
        )
    target = (
        source.qat.flavour
        if qat and source.qat is not None
        else options.target or ("tensorrt" if backend == "tensorrt" or ort_backend.has_cuda() else "cpu")
    )

    calibration_set: ImageSet | None = None
    if not qat and (options.precision == "int8" or options.calib_dir is not None):
        calibration_set = calibration_set_for(source, options, progress)
    precision_path = model_path
    recipe: dict[str, Any] = {}
    calibration: dict[str, Any] | None = None
    flavour = target if options.precision == "int8" else None
    if backend == "openvino":
        return build_openvino(source, options, output, calibration_set, started, backend_reason, progress)
    staged_path = None
    # Implicit INT8: TensorRT calibrates FP32; a QAT export is its own precision file.
    if writes_precision_file:
        precision_path = (
            Path(output)
            if output and backend == "onnxruntime"
            else naming.precision_onnx_path(model_path, options.precision, flavour)
        )
        # Written and checked under a temporary name, renamed into place only once it passed.
        staged_path = temp_path_beside(precision_path)
    notes = calibration_notes(calibration_set) if options.precision == "int8" else ()
    # Without fp16/int8 a precision file is built as it is: the artifact is what the source is.
    built_precision = options.precision if options.precision != "fp32" else source.precision
    try:
        made = make_precision_file(
            source, staged_path, proto, metadata, options, target, input_name, calibration_set, progress
        )
        recipe, calibration, fidelity = made.recipe, made.calibration, made.fidelity
        notes += (made.gate_note,) if made.gate_note else ()
        common = dict(
            source_onnx_sha256=source.sha256,
            source_metadata=metadata.to_dict() if metadata else {},
            precision=built_precision,
            recipe=recipe,
            calibration=calibration,
            build_options={**options.to_dict(), "target": flavour or options.target},
            sedeploy_version=__version__,
        )
        artifacts: list[Path] = []
        manifests: list[BuildManifest] = []
        precision_audit: PrecisionAudit | None = None
        if backend == "onnxruntime":
            with stage("build: ONNX Runtime optimized graph", progress):
                artifacts, manifests, precision_audit = publish_onnxruntime(
                    source,
                    precision_path,
                    staged_path,
                    output,
                    started,
                    common,
                    options.min_precision_share,
                )
            if (
                not gate_applies("onnxruntime", recipe, built_precision, ort_backend.has_cuda())
                and precision_audit
            ):
                notes += (
                    f"{built_precision} runs as {format_shares(precision_audit.shares())} of the MACs on ONNX Runtime "
                    "here: the file is the portable one for TensorRT and GPUs"
                    + (
                        "; for 16-bit floats on a CPU, build bf16 with the openvino backend where the CPU has BF16 units"
                        if built_precision == "fp16"
                        else "; for INT8 on a CPU, build the cpu flavour"
                    ),
                )
        else:
            from sedeploy.backends import tensorrt as trt_backend

            if staged_path is not None:
                # TensorRT builds from the precision ONNX in place. A manifest beside it from an earlier
                # ONNX Runtime build describes other bytes now: it goes in the same locked step.
                with folder_lock(precision_path.parent):
                    os.replace(staged_path, precision_path)
                    manifest_path(precision_path).unlink(missing_ok=True)
            engine_path = Path(output) if output else naming.engine_path(precision_path)
            legacy: dict[str, Any] = {}
            if options.implicit_int8:
                assert calibration_set is not None
                batches = calibration_set.images
                legacy = {
                    "implicit_int8": [batches[i : i + 8] for i in range(0, len(batches), 8)],
                    "calibration_cache": engine_path.with_suffix(".calibration.trt.cache"),
                }
                common = {key: value for key, value in common.items() if key not in ("precision", "recipe")}
            engine_manifest = trt_backend.build_engine_from_onnx(
                precision_path,
                engine_path,
                common=common,
                started=started,
                progress=progress,
                **options.tensorrt.builder_kwargs(),
                **legacy,
            )
            artifacts.append(engine_path)
            manifests.append(engine_manifest)
            precision_audit = audit_engine(engine_path, engine_manifest, model_path, options)
    finally:
        if staged_path is not None:
            staged_path.unlink(missing_ok=True)
    return BuildResult(
        backend=backend,
        backend_reason=backend_reason,
        precision=built_precision,
        artifacts=tuple(artifacts),
        manifests=tuple(manifests),
        fidelity=fidelity,
        calibration=calibration,
        seconds=time.perf_counter() - started,
        notes=notes,
        precision_audit=precision_audit,
        repaired=made.repaired,
    )
