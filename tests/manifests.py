"""One way for tests to make a build manifest: a valid default that each test overrides where it matters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sedeploy.artifacts.manifest import BuildManifest
from sedeploy.files import sha256_of_file

ENGINE = {"tensorrt_version": "10.3.0", "profile": {"min": 1, "opt": 8, "max": 32}}
"""The ``engine`` record of a TensorRT build (version and batch profile), for ``kind="engine"``."""


def make_manifest(
    artifact: Path | str = "model.onnx", *, kind: str = "onnx", **overrides: Any
) -> BuildManifest:
    """A manifest for ``artifact`` (hashed when it is a file); ``kind`` ``onnx`` or ``engine`` picks the defaults.

    Every field can be overridden by name, e.g. ``make_manifest(path, precision="int8", engine={...})``.
    """
    path = Path(artifact)
    fields: dict[str, Any] = {
        "artifact": path.name,
        "artifact_sha256": sha256_of_file(path) if path.is_file() else "0" * 64,
        "artifact_format": "tensorrt_plan" if kind == "engine" else "onnx",
        "backend": "tensorrt" if kind == "engine" else "onnxruntime",
        "backend_version": "10.3.0" if kind == "engine" else "test",
        "precision": "fp32",
        "source_onnx_sha256": "0" * 64,
        "source_metadata": {},
        "device": {"description": "test"},
        "engine": dict(ENGINE) if kind == "engine" else None,
    }
    fields.update(overrides)
    return BuildManifest(**fields)
