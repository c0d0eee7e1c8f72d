"""``sedeploy inspect ARTIFACT``: what an artifact is (manifest, model) and what precision each layer really runs in.

The manifest says what was asked and how it was built; the precision audit
(:mod:`sedeploy.backends.audit`) says what the backend runs after optimising the
graph. Both side by side, for an ONNX Runtime ``.onnx``/``.ort.onnx``, an OpenVINO
``.xml`` or a TensorRT engine.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedeploy.artifacts import naming
from sedeploy.artifacts.manifest import matching_manifest
from sedeploy.artifacts.metadata import load_onnx, metadata_or_none
from sedeploy.artifacts.precision import detect_precision, graph_precision
from sedeploy.backends.audit import PrecisionAudit, audit
from sedeploy.errors import BadInputError, MissingDependencyError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InspectReport:
    """What ``sedeploy inspect`` prints (``to_text``) or writes as JSON (``to_dict``)."""

    artifact: str
    backend: str
    size_bytes: int
    precision: str
    """The artifact's precision by the one precision rule (manifest, else graph)."""
    manifest: dict[str, Any] | None
    model: dict[str, Any] | None
    graph_precision: str | None
    audit: PrecisionAudit | None
    audit_unavailable: str | None = None
    int8_mac_share: float | None = None
    """INT8 ONNX: the share of Conv/Gemm/MatMul MACs whose input and weights pass through Q/DQ in the graph
    (an ``.ort.onnx``: in the precision file it was built from), beside what the backend runs (the audit)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "size_bytes": self.size_bytes,
            "precision": self.precision,
            "graph_precision": self.graph_precision,
            "manifest": self.manifest,
            "model": self.model,
            "precision_audit": self.audit.to_dict() if self.audit else None,
            "audit_unavailable": self.audit_unavailable,
            "int8_mac_share": None if self.int8_mac_share is None else round(self.int8_mac_share, 4),
        }

    def to_text(self) -> str:
        lines = [
            f"{self.artifact}: {self.backend} artifact, {self.size_bytes / 1e6:.2f} MB, {self.precision}"
        ]
        if self.model:
            lines.append(
                f"model: {self.model['arch']}, input {self.model['input_size']}, {self.model['num_classes']} classes"
            )
        if self.manifest is None:
            lines.append("manifest: none describes this file")
        else:
            built = self.manifest
            recipe = built.get("recipe") or {}
            flavour = f", {recipe['flavour']} flavour" if recipe.get("flavour") else ""
            lines.append(
                f"manifest: {built['precision']} on {built['backend']} {built['backend_version']}{flavour}, "
                f"built {built['created']}"
            )
            calibration = built.get("calibration")
            if calibration:
                parameters = recipe.get("calibration_parameters") or {"method": calibration.get("method")}
                order = ("percentile", "histogram_bins", "quantized_bins", "symmetric")
                described = ", ".join(f"{key} {parameters[key]}" for key in order if key in parameters)
                lines.append(
                    f"calibration: {parameters.get('method')}"
                    + (f" ({described})" if described else "")
                    + f" on {calibration.get('images')} images"
                )
            repair = recipe.get("repair")
            if isinstance(repair, dict) and repair.get("status") == "repaired":
                lines.append(f"repaired: {repair.get('summary')}")
            if recipe.get("float_modules"):
                kept = ", ".join(dict.fromkeys(recipe["float_modules"]))
                lines.append(f"kept out of INT8 by the recipe: {kept}")
        if self.graph_precision and self.graph_precision != self.precision:
            lines.append(f"graph: {self.graph_precision} (the manifest says {self.precision})")
        if self.int8_mac_share is not None:
            lines.append(
                f"int8 MAC share of the graph (Q/DQ on input and weights): {100 * self.int8_mac_share:.0f}%"
            )
        if self.audit is not None:
            lines.append(self.audit.to_text())
        elif self.audit_unavailable:
            lines.append(f"precision audit: not run ({self.audit_unavailable})")
        return "\n".join(lines)


def inspect_artifact(
    path: str | os.PathLike[str], source: str | os.PathLike[str] | None = None
) -> InspectReport:
    """Describe the artifact at ``path`` and audit the precision its layers run in.

    ``source``: the ONNX it was built from, when it is not beside it. Where the
    backend is not installed here (TensorRT on a machine without it), the report
    says so instead of an audit.
    """
    artifact = Path(path)
    if not artifact.is_file():
        raise BadInputError(
            f"{artifact} does not exist; give an .onnx, .xml or .engine file built by sedeploy"
        )
    backend = naming.artifact_backend(artifact)
    if backend == "torch":
        raise BadInputError(f"{artifact} is not a built artifact; give an .onnx, .xml or .engine file")
    manifest = matching_manifest(artifact)
    model: dict[str, Any] | None = None
    graph: str | None = None
    if artifact.suffix.lower() == ".onnx":
        proto = load_onnx(artifact)
        graph = graph_precision(proto)
        metadata = metadata_or_none(proto)
        model = metadata.to_dict() if metadata else None
    if model is None and manifest is not None and manifest.source_metadata:
        model = dict(manifest.source_metadata)
    precision = detect_precision(artifact)
    share: float | None = None
    if backend == "onnxruntime" and precision == "int8":
        graph_file = naming.portable_onnx_path(artifact)
        if graph_file.is_file():
            from sedeploy.measure.layers import int8_mac_share

            share = int8_mac_share(proto if graph_file == artifact else graph_file)
    report: PrecisionAudit | None = None
    unavailable = None
    try:
        report = audit(artifact, Path(source) if source is not None else None)
    except MissingDependencyError as error:
        unavailable = str(error)
    except ImportError as error:  # TensorRT's module itself, imported where the engine is read
        unavailable = f"{error.name or 'a backend'} is not installed here"
    return InspectReport(
        artifact=str(artifact),
        backend=backend,
        size_bytes=artifact.stat().st_size,
        precision=precision,
        manifest=manifest.to_dict() if manifest else None,
        model=model,
        graph_precision=graph,
        audit=report,
        audit_unavailable=unavailable,
        int8_mac_share=share,
    )
