"""The build manifest: one JSON format, written beside every artifact a build produces, for every backend.

A manifest says what an artifact is and how it was made (precision and recipe,
calibration, source model, backend and device), so a runner can refuse an engine
built for another TensorRT version or GPU, and a serving side can see what it
runs. It lives at ``<artifact file name>.manifest.json`` (``model.engine`` ->
``model.engine.manifest.json``) and is written atomically after the artifact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from sedeploy._version import __version__
from sedeploy.errors import BadInputError
from sedeploy.files import (
    commit_files,
    folder_lock,
    read_regular_text,
    sha256_of_file,
    special_file_reason,
    temp_path_beside,
    write_json_atomic,
)

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
ARTIFACT_FORMATS = ("onnx", "tensorrt_plan", "openvino_ir")
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "artifact": str,
    "artifact_sha256": str,
    "artifact_format": str,
    "backend": str,
    "backend_version": str,
    "precision": str,
    "source_onnx_sha256": str,
    "source_metadata": dict,
    "device": dict,
    "recipe": dict,
    "calibration": (dict, type(None)),
    "engine": (dict, type(None)),
    "precision_audit": (dict, type(None)),
    "build_options": dict,
    "runner_defaults": dict,
    "search": (dict, type(None)),
    "build_seconds": (int, float),
    "sedeploy_version": str,
    "created": str,
    "manifest_version": int,
}
"""Each field's JSON type: a manifest read from disk is checked against it before anyone uses it."""


class ManifestError(BadInputError):
    """A manifest is missing, unreadable, or does not match its artifact."""


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """Where the manifest of ``artifact`` lives."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class BuildManifest:
    """What an artifact is and how it was built.

    ``recipe``: precision details (``flavour`` tensorrt|cpu for INT8, ops left in
    float, FP16 block-list). ``calibration``: method, percentile, image count,
    skipped files, dataset sha256, whether a cached calibration was reused; None
    without INT8. ``device``: at least ``description``; TensorRT builds add
    ``gpu_name`` and ``compute_capability``. ``engine``: TensorRT only
    (``tensorrt_version``, ``profile`` {min, opt, max}, ``hardware_compat``,
    ``version_compat``).
    """

    artifact: str
    artifact_sha256: str
    artifact_format: str
    backend: str
    backend_version: str
    precision: str
    source_onnx_sha256: str
    source_metadata: dict[str, Any]
    device: dict[str, Any]
    recipe: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None
    precision_audit: dict[str, Any] | None = None
    """What each Conv/Gemm/MatMul runs in after the backend optimised it (``backends.audit.PrecisionAudit``)."""
    build_options: dict[str, Any] = field(default_factory=dict)
    runner_defaults: dict[str, Any] = field(default_factory=dict)
    """Runner options ``sedeploy.load`` opens the artifact with unless the caller passes them (``optimize``'s choice)."""
    search: dict[str, Any] | None = None
    """``sedeploy optimize``: the whole search that chose this artifact (candidates, figures, machine, key)."""
    build_seconds: float = 0.0
    sedeploy_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    manifest_version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        for name, expected in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                raise ValueError(f"{name} has the wrong type ({type(value).__name__})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.artifact_format not in ARTIFACT_FORMATS:
            raise ValueError(
                f"artifact_format must be one of {ARTIFACT_FORMATS}, got {self.artifact_format!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "manifest") -> BuildManifest:
        """Parse a manifest dict; unknown keys from newer minor versions are ignored."""
        version = data.get("manifest_version")
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise ManifestError(
                f"{source} has manifest version {version!r}; this sedeploy reads up to {MANIFEST_VERSION}: "
                "upgrade sedeploy or rebuild the artifact"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{key: value for key, value in data.items() if key in names})
        except (TypeError, ValueError) as error:
            raise ManifestError(
                f"{source} is not a valid sedeploy manifest ({error}); rebuild the artifact"
            ) from None

    def check_artifact(self, artifact: str | os.PathLike[str]) -> None:
        """Fail unless ``artifact``'s bytes are the ones this manifest describes (a streaming sha256).

        A file already checked in this process, unchanged since (same inode, size, modification and change
        times), is not hashed again: ``verify`` of an engine opens its manifest from four places.
        """
        identity = _file_identity(artifact)
        if identity is not None and _CHECKED.get(identity) == self.artifact_sha256:
            return
        actual = sha256_of_file(artifact, "artifact")
        if actual != self.artifact_sha256:
            raise ManifestError(
                f"{artifact} does not match its manifest (sha256 {actual[:12]}... != {self.artifact_sha256[:12]}...): "
                "the file was changed or truncated after the build; rebuild it, or pass verify_hash=False "
                "to load it unchecked"
            )
        if identity is not None and identity == _file_identity(artifact):  # unchanged while it was hashed
            _CHECKED[identity] = actual


_CHECKED: dict[tuple[str, int, int, int, int, int], str] = {}
"""Artifacts whose hash matched in this process, by file identity: each is hashed once per process."""


def _file_identity(path: str | os.PathLike[str]) -> tuple[str, int, int, int, int, int] | None:
    """What changes whenever a file's bytes do (the change time cannot be set back), or None if unreadable."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (
        os.path.realpath(path),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
    )


@overload
def checked_manifest(
    artifact: str | os.PathLike[str], *, verify_hash: bool = ..., required: Literal[True]
) -> BuildManifest: ...


@overload
def checked_manifest(
    artifact: str | os.PathLike[str], *, verify_hash: bool = ..., required: Literal[False] = ...
) -> BuildManifest | None: ...


@overload
def checked_manifest(
    artifact: str | os.PathLike[str], *, verify_hash: bool = ..., required: bool
) -> BuildManifest | None: ...


def checked_manifest(
    artifact: str | os.PathLike[str], *, verify_hash: bool = True, required: bool = False
) -> BuildManifest | None:
    """The manifest beside ``artifact``, after checking that the file is the one it describes.

    No manifest: None (an artifact sedeploy did not build, e.g. an exported ONNX),
    or a :class:`ManifestError` when ``required`` (so ``required=True`` always returns
    a manifest, and its type says so). A manifest that cannot be read (a pipe or
    device at its path included) or whose ``artifact_sha256`` differs from the
    file's is always refused; ``verify_hash=False`` skips the hash (large engines in
    hot paths) but still reads and checks the manifest itself.
    """
    if not required and not os.path.lexists(manifest_path(artifact)):
        return None
    try:
        return _read_and_check(artifact, verify_hash)
    except ManifestError:
        # A build may be publishing this artifact right now (file renamed, manifest not yet): look once more
        # after it finished. The lock is the one publishing holds (files.commit_files).
        try:
            with folder_lock(Path(artifact).parent):
                return _read_and_check(artifact, verify_hash)
        except OSError:  # the folder cannot be opened for locking: the first answer stands
            pass
        raise


def matching_manifest(artifact: str | os.PathLike[str]) -> BuildManifest | None:
    """:func:`checked_manifest`, but None instead of an error: for callers that fall back to the file itself."""
    try:
        return checked_manifest(artifact)
    except ManifestError:
        return None


def _read_and_check(artifact: str | os.PathLike[str], verify_hash: bool) -> BuildManifest:
    manifest = read_manifest(artifact)
    if verify_hash:
        manifest.check_artifact(artifact)
    return manifest


def commit_with_manifests(
    staged: Sequence[tuple[Path, Path]], manifests: Sequence[tuple[BuildManifest, Path]]
) -> None:
    """Publish staged artifact files and their manifests as one unit (see :func:`sedeploy.files.commit_files`).

    ``staged``: (temporary file, destination) pairs, already complete;
    ``manifests``: (manifest, artifact destination). Each manifest is written to a
    temporary file first; then every file is renamed into place under the
    destination folder's lock, so racing builds never leave one build's artifact
    with another's manifest. Temporary files are removed whatever happens.
    """
    temps: list[Path] = []
    try:
        moves = list(staged)
        for manifest, artifact in manifests:
            destination = manifest_path(artifact)
            temp = temp_path_beside(destination)
            temps.append(temp)
            temp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
            moves.append((temp, destination))
        commit_files(moves)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
        for temp in temps:
            temp.unlink(missing_ok=True)


def write_with_manifest(artifact: str | os.PathLike[str], data: bytes, manifest: BuildManifest) -> Path:
    """Write ``data`` to ``artifact`` and ``manifest`` beside it, atomically as a pair; returns the manifest path.

    The manifest's ``artifact_sha256`` must be the hash of ``data``.
    """
    artifact = Path(artifact)
    staged = temp_path_beside(artifact)
    try:
        staged.write_bytes(data)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    commit_with_manifests([(staged, artifact)], [(manifest, artifact)])
    return manifest_path(artifact)


def write_manifest(manifest: BuildManifest, artifact: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` beside ``artifact`` atomically; returns the manifest's path."""
    return write_json_atomic(manifest_path(artifact), manifest.to_dict())


def read_manifest(artifact: str | os.PathLike[str]) -> BuildManifest:
    """Read the manifest beside ``artifact``; a missing or broken one is a :class:`ManifestError`."""
    path = manifest_path(artifact)
    special = special_file_reason(path)
    if special is not None:
        raise ManifestError(
            f"manifest {path} is {special}, not a regular file; remove it and rebuild {Path(artifact).name}"
        )
    if not path.is_file():
        raise ManifestError(
            f"{artifact} has no manifest ({path.name} is missing); rebuild it with sedeploy build-engine"
        )
    try:
        data = json.loads(read_regular_text(path, "manifest"))
    except (BadInputError, OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ManifestError(f"cannot read manifest {path} ({error}); rebuild the artifact") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path} is not a JSON object; rebuild the artifact")
    return BuildManifest.from_dict(data, source=str(path))
