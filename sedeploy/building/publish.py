"""Publishing: each backend's artifact built from the checked precision file, audited, committed with its manifest."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sedeploy._version import __version__
from sedeploy.artifacts import naming
from sedeploy.artifacts.manifest import (
    BuildManifest,
    commit_with_manifests,
    manifest_path,
    write_manifest,
)
from sedeploy.artifacts.module_names import module_name, read_module_names
from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.backends.audit import (
    DEFAULT_MIN_PRECISION_SHARE,
    PrecisionAudit,
    audit_gate,
    audit_onnxruntime,
    gate_applies,
)
from sedeploy.building.gate import (
    calibration_notes,
    check_on_openvino,
    gate_failures,
    gate_images,
    parity_gate,
)
from sedeploy.building.options import BuildOptions, BuildResult
from sedeploy.building.qat import NOT_REPAIRED, qat_check, qat_gate
from sedeploy.building.repair import (
    NOT_NEEDED,
    OpenVinoSetup,
    Repair,
    RepairJob,
    repair_openvino,
    worst_modules,
)
from sedeploy.building.source import SourceModel, graph_input_name, random_images
from sedeploy.data import ImageSet
from sedeploy.errors import ConfigError
from sedeploy.files import pause_for_tests, sha256_of_file, temp_path_beside
from sedeploy.host import cpu_features, describe_host
from sedeploy.precision import (
    Int8Recipe,
    PrecisionError,
)

logger = logging.getLogger(__name__)


def publish_onnxruntime(
    source: SourceModel,
    precision_path: Path,
    staged_path: Path | None,
    output: str | Path | None,
    started: float,
    common: dict[str, Any],
    min_precision_share: float = DEFAULT_MIN_PRECISION_SHARE,
) -> tuple[list[Path], list[BuildManifest], PrecisionAudit]:
    """Write ONNX Runtime's optimized graph, audit it, then publish it, the precision ONNX and their manifests as one unit.

    ``staged_path`` is the checked precision ONNX under its temporary name (None
    for FP32). Everything is staged first and renamed into place together under
    the folder's lock (:func:`~sedeploy.artifacts.manifest.commit_with_manifests`), so an
    interrupted or concurrent build never leaves an artifact beside another
    build's manifest. A graph whose asked precision covers less than
    ``min_precision_share`` of the MACs once optimized is not published (:func:`audit_gate`).
    """
    model_path, source_graph = source.path, source.proto
    providers = ort_backend.default_providers()
    device = {"description": describe_host(), "providers": providers, "cpu_features": list(cpu_features())}
    artifacts: list[Path] = []
    manifests: list[BuildManifest] = []
    staged: list[tuple[Path, Path]] = []
    optimized_path = (
        Path(output)
        if output and staged_path is None  # FP32: the optimized graph is what -o names
        else naming.optimized_onnx_path(precision_path)
    )
    optimized_staged = temp_path_beside(optimized_path)
    try:
        ort_backend.write_optimized_model(staged_path or model_path, optimized_staged, providers)
        precision_audit = audit_onnxruntime(optimized_staged, source=source_graph, already_optimized=True)
        if gate_applies("onnxruntime", common["recipe"], common["precision"], ort_backend.has_cuda()):
            audit_gate(
                common["precision"],
                precision_audit,
                min_precision_share,
                intended_float=(common["recipe"] or {}).get("float_nodes") or (),
            )
        common = {**common, "precision_audit": precision_audit.to_dict()}
        if staged_path is not None:
            manifests.append(
                onnx_manifest(precision_path, "onnxruntime", device, started, staged_path, **common)
            )
            artifacts.append(precision_path)
            staged.append((staged_path, precision_path))
        staged.append((optimized_staged, optimized_path))
        optimized_device = {**device, "optimization_level": "all"}
        manifests.append(
            onnx_manifest(
                optimized_path, "onnxruntime", optimized_device, started, optimized_staged, **common
            )
        )
        artifacts.append(optimized_path)
        pause_for_tests("publish")
        commit_with_manifests(staged, list(zip(manifests, artifacts, strict=True)))
    finally:
        optimized_staged.unlink(missing_ok=True)
    return artifacts, manifests, precision_audit


def onnx_manifest(
    path: Path,
    backend: str,
    device: dict[str, Any],
    started: float,
    staged: Path | None = None,
    **common: Any,
) -> BuildManifest:
    """The manifest of the artifact that will be published at ``path``, hashed from ``staged`` (default ``path``)."""
    return BuildManifest(
        artifact=path.name,
        artifact_sha256=sha256_of_file(staged or path),
        artifact_format="onnx",
        backend=backend,
        backend_version=ort_backend.version(),
        device=device,
        build_seconds=round(time.perf_counter() - started, 3),
        **common,
    )


def audit_engine(
    engine_path: Path, manifest: BuildManifest, model_path: Path, options: BuildOptions
) -> PrecisionAudit:
    """Audit a built engine (its inspector JSON), record it in its manifest, and fail it below the asked share."""
    from sedeploy.backends.audit import audit_tensorrt

    precision_audit = audit_tensorrt(engine_path, source=model_path)
    write_manifest(replace(manifest, precision_audit=precision_audit.to_dict()), engine_path)
    try:
        audit_gate(
            manifest.precision,
            precision_audit,
            options.min_precision_share,
            intended_float=(manifest.recipe or {}).get("float_nodes") or (),
        )
    except PrecisionError:
        engine_path.unlink(missing_ok=True)
        manifest_path(engine_path).unlink(missing_ok=True)
        raise
    return precision_audit


def build_openvino(
    source: SourceModel,
    options: BuildOptions,
    output: str | Path | None,
    calibration_set: ImageSet | None,
    started: float,
    reason: str,
    progress: bool = False,
) -> BuildResult:
    """The OpenVINO IR of the FP32 ONNX: NNCF quantizes INT8 from the FP32 graph on the calibration set.

    The IR's float type and hint are measured here at ``options.probe_batches`` (or pinned by the options'
    ``float_type`` / ``hint``), recorded in the manifest, and the fidelity check runs the IR that way. An INT8
    IR that misses the gate is repaired (:func:`sedeploy.building.repair.repair_openvino`: NNCF on the
    equalized graph, then NNCF's ignored scope) unless ``options.repair`` or ``options.gate`` is off.
    """
    from sedeploy.backends import openvino as ov_backend
    from sedeploy.measure.runtime_choice import choose_runtime, describe_choice

    model_path, proto, metadata = source.path, source.proto, source.metadata
    xml = Path(output) if output else naming.openvino_path(model_path, options.precision)
    # A QAT export: OpenVINO reads its Q/DQ as it is (no NNCF), judged against its float twin.
    qat = qat_check(source, options, progress) if source.builds_qat and options.precision == "int8" else None
    reference = qat.reference if qat is not None else model_path
    split = (
        qat.images
        if qat is not None
        else gate_images(
            calibration_set.images if calibration_set is not None else None,
            lambda: random_images(proto, metadata),
        )
    )
    images = split.ranges
    input_name = metadata.input_name if metadata else graph_input_name(proto)
    stem = [node.name for node in proto.graph.node if node.op_type == "Conv" and node.input[0] == input_name]
    xml.parent.mkdir(parents=True, exist_ok=True)
    repaired: str | None = None
    repair: Repair | None = None
    # Built, hashed and checked in a staging folder, then published with its manifest as one unit.
    with tempfile.TemporaryDirectory(prefix=".sedeploy-stage-", dir=xml.parent) as stage:
        staged_xml = Path(stage) / xml.name
        if qat is not None:
            recipe = {**ov_backend.build_ir(model_path, staged_xml, "fp32"), **qat.recipe}
        else:
            recipe = ov_backend.build_ir(model_path, staged_xml, options.precision, images, stem[:1])
        if options.precision != "fp32":
            recipe = {**recipe, "parity_check": split.to_dict()}
        calibration = None
        if options.precision == "int8" and calibration_set is not None:
            report = calibration_set.report
            calibration = {
                "method": "nncf-minmax",
                "percentile": None,
                "images": len(split.ranges) if split.ranges is not None else report.used,
                "found": report.found,
                "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
                "dataset_sha256": report.dataset_sha256,
                "folder": report.folder,
                "reused": False,
                "tensors": None,
            }

        def manifest_with(runtime: dict[str, Any] | None) -> BuildManifest:
            return ov_backend.ir_manifest(
                staged_xml,
                started,
                {"description": describe_host()},
                runtime,
                source_onnx_sha256=source.sha256,
                source_metadata=metadata.to_dict() if metadata else {},
                precision=options.precision,
                recipe=recipe,
                calibration=calibration,
                build_options={  # without the ONNX-recipe options: NNCF's own recipe is recorded in `recipe`
                    key: value
                    for key, value in {**options.to_dict(), "target": "openvino"}.items()
                    if key not in ("calib_method", "percentile", "quantize_se")
                },
                sedeploy_version=__version__,
            )

        write_manifest(manifest_with(None), staged_xml)  # the probe loads the staged IR as a runner would
        runtime = choose_runtime(
            staged_xml,
            options.precision,
            options.probe_batches,
            options.probe_seconds / 4,
            float_type=options.float_type,
            hint=options.hint,
        )
        manifest = manifest_with(runtime)
        write_manifest(
            manifest, staged_xml
        )  # the check below runs the IR as the runner will: recorded choice
        fidelity = check_on_openvino(reference, staged_xml, split.check, input_name, options.precision)
        calibrated_on = calibration_set.report.used if calibration_set else None
        if qat is not None:
            recipe = {**recipe, "repair": NOT_REPAIRED}
        elif options.precision == "int8":
            failing = bool(gate_failures("int8", fidelity))
            recipe = {
                **recipe,
                "repair": {"status": "not run", "why": "gate=False"} if failing else NOT_NEEDED,
            }
            if failing and options.gate:
                assert calibration_set is not None
                job = RepairJob(
                    source,
                    Int8Recipe(),
                    None,
                    split,
                    calibration_set.report.dataset_sha256,
                    options,
                    fidelity,
                    staged_xml,
                    progress,
                )
                if not options.repair:
                    parity_gate("int8", fidelity, options, calibrated_on, worst_modules(job))
                setup = OpenVinoSetup(tuple(stem[:1]), runtime.get("inference_precision"))
                found = repair_openvino(job, Path(stage) / "repair", setup)
                if not found.repair.passed:
                    parity_gate(
                        "int8",
                        fidelity,
                        options,
                        calibrated_on,
                        found.repair.worst_modules,
                        found.repair.reason,
                    )
                built = ov_backend.build_ir(
                    found.source, staged_xml, "int8", images, [*stem[:1], *found.float_nodes]
                )
                repair = found.repair
                names = read_module_names(proto)
                recipe = {
                    **built,
                    "parity_check": split.to_dict(),
                    "equalize": repair.equalization is not None,
                    "equalization": repair.equalization.to_dict() if repair.equalization else None,
                    "float_modules": [module_name(names, node) for node in built["float_nodes"]],
                    "repair": repair.to_dict(),
                }
                manifest = manifest_with(runtime)
                write_manifest(manifest, staged_xml)
                fidelity = check_on_openvino(
                    reference, staged_xml, split.check, input_name, options.precision
                )
        gate_note = (
            qat_gate(fidelity, options)
            if qat is not None
            else parity_gate(options.precision, fidelity, options, calibrated_on)
            if options.precision != "fp32"
            else None
        )
        from sedeploy.backends.audit import audit_openvino

        precision_audit = audit_openvino(staged_xml, source=model_path)
        audit_gate(
            options.precision,
            precision_audit,
            options.min_precision_share,
            intended_float=manifest.recipe.get("float_nodes") or (),
        )
        if repair is not None:  # the MAC share OpenVINO runs in INT8, by its precision audit
            repair = replace(repair, int8_mac_share=precision_audit.shares().get("int8", 0.0))
            repaired = repair.summary()
            logger.info("repaired: %s", repaired)
            recipe = {
                **manifest.recipe,
                "repair": repair.to_dict(),
                "int8_mac_share": round(repair.int8_mac_share or 0.0, 4),
            }
        if options.precision != "fp32":  # what the repair and the gate decided, as the ONNX builds record it
            gate = "passed" if gate_note is None else "failed, published with gate=False"
            recipe = {**recipe, "parity_gate": gate}
        manifest = replace(manifest, recipe=recipe, precision_audit=precision_audit.to_dict())
        write_manifest(manifest, staged_xml)
        pause_for_tests("publish")
        commit_with_manifests(
            [(staged_xml.with_suffix(".bin"), xml.with_suffix(".bin")), (staged_xml, xml)], [(manifest, xml)]
        )
    return BuildResult(
        backend="openvino",
        backend_reason=f"{reason}; {options.precision} IR {describe_choice(manifest.engine or {})}",
        precision=options.precision,
        artifacts=(xml,),
        manifests=(manifest,),
        fidelity=fidelity,
        calibration=calibration,
        seconds=time.perf_counter() - started,
        precision_audit=precision_audit,
        notes=(calibration_notes(calibration_set) if options.precision == "int8" else ())
        + ((gate_note,) if gate_note else ()),
        repaired=repaired,
    )


def check_output_suffix(output: Path, backend: str) -> None:
    """Refuse an ``-o`` whose suffix :func:`sedeploy.load` would open with another backend than the one building it."""

    suffixes = naming.OUTPUT_SUFFIXES
    runnable = (*naming.ONNX_SUFFIXES, *naming.ENGINE_SUFFIXES, *naming.OPENVINO_SUFFIXES)
    if output.suffix.lower() in runnable and naming.artifact_backend(output) == backend:
        return
    raise ConfigError(
        f"output {output} is not a {backend} artifact name; end it with {suffixes[backend]} "
        f"(or pick the backend with backend)",
        params=("output", "backend"),
    )
