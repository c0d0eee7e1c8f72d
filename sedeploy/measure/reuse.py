"""The reuse decisions: whether an artifact on disk is this build of this source, and whether a recorded
search still holds (its inputs' fingerprints, the machine it was measured on), or why not.

One rule for every command that finds builds before making them (``bench --compare``, ``optimize``): the
manifest (hash-checked) must name the same source sha256, backend, precision, INT8 flavour, calibration and
build options, compared as :meth:`sedeploy.building.BuildOptions.to_dict` structures, and a TensorRT engine
must run on this TensorRT and GPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sedeploy._version import __version__
from sedeploy.errors import MissingDependencyError
from sedeploy.host import describe_machine


def reuse_problem(
    artifact: Path,
    source_sha256: str,
    backend: str,
    precision: str,
    flavour: str | None,
    calibration: Path | None,
    calib_size: int,
    extra_options: dict[str, Any],
) -> str | None:
    """Why ``artifact`` must be (re)built, or None when its manifest says it is this build of this source."""
    from sedeploy.artifacts.manifest import ManifestError, checked_manifest

    if not artifact.is_file():
        return "not built yet"
    try:
        manifest = checked_manifest(artifact, required=True)
    except ManifestError as error:
        return str(error)
    assert manifest is not None
    if manifest.source_onnx_sha256 != source_sha256:
        return "built from another version of the model"
    if manifest.backend != backend or manifest.precision != precision:
        return f"it is a {manifest.backend} {manifest.precision} build"
    options = manifest.build_options or {}
    if precision == "int8":
        if backend != "openvino" and options.get("target") != flavour:
            return f"it is the {options.get('target')} INT8 flavour"
        recorded = (manifest.calibration or {}).get("folder")
        if calibration is not None and (
            recorded is None or Path(recorded).resolve() != calibration.resolve()
        ):
            return f"calibrated on {recorded}, not {calibration}"
        if options.get("calib_size") != calib_size:
            return f"calibrated on up to {options.get('calib_size')} images, not {calib_size}"
    for key, value in extra_options.items():  # as BuildOptions.to_dict writes them: structures, not strings
        if options.get(key) != value:
            return f"built with {key}={options.get(key)!r}, not {value!r}"
    if backend == "tensorrt":
        return _engine_problem(manifest)
    return None


def _engine_problem(manifest: Any) -> str | None:
    """Why a TensorRT engine does not run here (other TensorRT or GPU), or None."""
    import tensorrt as trt

    from sedeploy.backends import cuda_memory
    from sedeploy.backends.tensorrt import engine_compatibility_problem

    return engine_compatibility_problem(
        manifest.engine,
        manifest.device,
        tensorrt_version=trt.__version__,
        compute_capability=cuda_memory.device_info(0).compute_capability,
    )


def folder_fingerprint(folder: Path | None, times: bool = False) -> str | None:
    """A cheap identity of an image folder or file: every file's relative name and size.

    No absolute path and no times, so the same set copied to another machine has the same identity (the
    previous choice is then reported stale there, not silently redone). Calibration ranges are checked on
    the pixels themselves (the calibration cache's key); this only decides whether a search may be reused.
    ``times``: add modification times, for caches that stay on this machine (a rewritten image counts).
    """
    if folder is None or not folder.exists():
        return None

    def line(path: Path, name: str) -> str:
        stat = path.stat()
        return f"{name}|{stat.st_size}" + (f"|{stat.st_mtime_ns}" if times else "") + "\n"

    if folder.is_file():
        return hashlib.sha256(line(folder, folder.name).encode()).hexdigest()
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(line(path, path.relative_to(folder).as_posix()).encode())
    return digest.hexdigest()


def machine_identity() -> dict[str, Any]:
    """What a measured choice depends on besides the inputs: the CPU, its matrix units, cores, backend versions."""
    from sedeploy.backends import onnxruntime as ort_backend

    versions: dict[str, str | None] = {"sedeploy": __version__, "onnxruntime": ort_backend.version()}
    try:
        from sedeploy.backends import openvino as ov_backend

        ov_backend.require_available()
        versions["openvino"] = ov_backend.version()
    except MissingDependencyError:
        versions["openvino"] = None
    try:
        import tensorrt

        versions["tensorrt"] = str(tensorrt.__version__)
    except ImportError:
        versions["tensorrt"] = None
    machine = describe_machine()  # the one machine description
    return {
        "cpu": machine["cpu"],
        "isa": machine["isa"],
        "cores": machine["cores"],
        "versions": versions,
    }


def stale_reason(previous: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """What changed on the machine since a choice was measured (CPU, ISA, cores, versions), or None."""
    changed = [
        f"{name} {previous.get(name)!r} -> {now.get(name)!r}"
        for name in ("cpu", "isa", "cores")
        if previous.get(name) != now.get(name)
    ]
    before, after = previous.get("versions") or {}, now.get("versions") or {}
    changed += [
        f"{package} {before.get(package) or 'absent'} -> {after.get(package) or 'absent'}"
        for package in sorted(set(before) | set(after))
        if before.get(package) != after.get(package)
    ]
    return "; ".join(changed) or None
