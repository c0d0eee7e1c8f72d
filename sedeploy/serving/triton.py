"""``sedeploy triton``: a Triton Inference Server model repository for an engine or ONNX model.

The command's two bodies over :mod:`sedeploy.serving.repository` (what an artifact
serves, its ``ModelConfig``, ``config.pbtxt`` through Triton's schema):
:func:`write_repository` lays out ``<repo>/<name>/config.pbtxt``,
``<repo>/<name>/<version>/model.onnx|model.plan`` (with the build manifest copied
beside it, and an ONNX's external data files at the paths the model names) and
``labels.txt``; :func:`check_repository` (``--check``) validates a repository
against Triton's schema and against the model files.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from sedeploy.artifacts.manifest import manifest_path
from sedeploy.artifacts.naming import OPTIMIZED_ONNX_SUFFIX, is_optimized_onnx
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import atomic_output, sha256_of_file
from sedeploy.serving.repository import (
    BACKEND_PLATFORMS,
    CONFIG_FILE,
    DEFAULT_QUEUE_DELAY_US,
    KINDS,
    LABELS_FILE,
    MODEL_FILES,
    ONNX_PLATFORM,
    PLAN_PLATFORM,
    ServingArtifact,
    ServingOptions,
    TensorConfig,
    TritonConfigError,
    check_model_name,
    config_text,
    model_config,
    parse_config,
    read_artifact,
    schema,
)

__all__ = [
    "DEFAULT_QUEUE_DELAY_US",
    "KINDS",
    "ModelExistsError",
    "RepositoryCheck",
    "RepositoryResult",
    "ServingOptions",
    "check_repository",
    "write_repository",
]

logger = logging.getLogger(__name__)


class ModelExistsError(BadInputError):
    """The repository already holds a different model of the same name."""


@dataclass(frozen=True)
class WrittenModel:
    """One model folder of a repository that :func:`write_repository` wrote."""

    name: str
    folder: Path
    versions: tuple[int, ...]
    artifacts: tuple[Path, ...]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "versions": list(self.versions),
            "artifacts": [str(path) for path in self.artifacts],
            "config": self.config,
        }


@dataclass(frozen=True)
class RepositoryResult:
    """What :func:`write_repository` wrote."""

    repository: Path
    models: tuple[WrittenModel, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"repository": str(self.repository), "models": [model.to_dict() for model in self.models]}

    def to_text(self) -> str:
        lines = []
        for model in self.models:
            config = model.config
            lines.append(
                f"{model.folder}: {config['platform']}, versions {', '.join(map(str, model.versions))}, "
                f"max batch {config['max_batch_size']}, "
                f"{config['instance_group'][0]['count']} x {config['instance_group'][0]['kind']}"
            )
        lines.append(f"start Triton with: tritonserver --model-repository={self.repository}")
        return "\n".join(lines)


def _version_files(artifact: ServingArtifact) -> dict[str, Path]:
    """The files one version folder holds: the model, its manifest when there is one, its external data files.

    The data files keep the relative paths the model names, so Triton finds them
    beside the copy as ONNX Runtime finds them beside the original.
    """
    files = {artifact.model_filename: artifact.path}
    if artifact.manifest is not None:
        files[artifact.model_filename + ".manifest.json"] = manifest_path(artifact.path)
    for location in artifact.data_files:
        if os.path.normpath(location) in files:
            raise BadInputError(
                f"{artifact.path} keeps external data in {location!r}, the name its copy takes in a Triton "
                "version folder; save the data under another name (onnx.save_model(..., location=...))"
            )
        files[Path(location).as_posix()] = artifact.path.parent / location
    return files


def _model_files(config: dict[str, Any], artifacts: dict[int, ServingArtifact]) -> dict[str, Path | str]:
    """Every file of a model folder, relative to it: a source path to copy, or text to write."""
    files: dict[str, Path | str] = {CONFIG_FILE: config_text(config)}
    labels = next(iter(artifacts.values())).labels
    if labels and any("\n" in label or "\r" in label for label in labels):
        raise BadInputError("a class label holds a line break, which labels.txt cannot carry; export again")
    if labels:
        files[LABELS_FILE] = "\n".join(labels) + "\n"
    for version, artifact in artifacts.items():
        for name, source in _version_files(artifact).items():
            files[f"{version}/{name}"] = source
    return files


def _holds_same(folder: Path, files: dict[str, Path | str]) -> bool:
    """True when ``folder`` already holds these config and labels and no other bytes under these names."""
    for relative, content in files.items():
        target = folder / relative
        if isinstance(content, str):
            if not target.is_file() or target.read_text(encoding="utf-8") != content:
                return False
        elif target.exists() and (
            not target.is_file()
            or target.stat().st_size != content.stat().st_size
            or sha256_of_file(target) != sha256_of_file(content)
        ):
            return False
    return True


def _write_files(folder: Path, files: dict[str, Path | str]) -> None:
    for relative, content in files.items():
        with atomic_output(folder / relative) as temp_path:
            if isinstance(content, str):
                temp_path.write_text(content, encoding="utf-8")
            else:
                shutil.copyfile(content, temp_path)


def _place_model(folder: Path, files: dict[str, Path | str], force: bool) -> None:
    """Write a model folder: a new or replaced one whole (built aside, then renamed), else only what is new.

    A write that fails (a full disk, a file size limit) leaves the folder as it was and no staging
    folder behind, and is one :class:`BadInputError` naming where it failed.
    """
    try:
        _place_model_files(folder, files, force)
    except OSError as error:
        where = error.filename or folder
        raise BadInputError(
            f"cannot write the Triton model {folder.name} at {where} ({error.strerror or error}); "
            "free disk space there or choose another output",
            params=("output",),
        ) from None


def _place_model_files(folder: Path, files: dict[str, Path | str], force: bool) -> None:
    if folder.exists() and not force:
        if not folder.is_dir() or not _holds_same(folder, files):
            raise ModelExistsError(
                f"{folder} already holds a different model named {folder.name!r}; "
                "give force=True to replace it, or another name",
                params=("name",),
            )
        _write_files(
            folder, {name: content for name, content in files.items() if not (folder / name).exists()}
        )
        return
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    retired = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.old")
    try:
        _write_files(staging, files)
        if folder.exists():
            os.replace(folder, retired)
        try:
            os.replace(staging, folder)
        except BaseException:
            if retired.exists():  # the old model goes back: a failed replace changes nothing
                os.replace(retired, folder)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def write_repository(
    artifacts: Sequence[str | os.PathLike[str]],
    repository: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: int = 1,
    per_precision: bool = False,
    options: ServingOptions | None = None,
    force: bool = False,
) -> RepositoryResult:
    """Lay out a Triton model repository serving ``artifacts``.

    Several artifacts become versions ``version, version + 1, ...`` of one model,
    or with ``per_precision`` one model each, named ``<name>_<precision>``. A model
    folder that already holds something else is replaced only with ``force``;
    re-running with the same artifacts and settings, or adding a new version
    under the same config, is allowed.
    """
    if not artifacts:
        raise ConfigError("give at least one artifact (an .onnx or an engine built by sedeploy build-engine)")
    if version < 1:
        raise ConfigError(f"version must be at least 1, got {version}", params=("version",))
    if name is not None:
        check_model_name(name)
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise BadInputError(f"{repository} is a file; give a folder for the model repository")
    options = options or ServingOptions()
    for path in artifacts:
        if is_optimized_onnx(Path(path)):
            portable = Path(path).with_name(Path(path).name[: -len(OPTIMIZED_ONNX_SUFFIX)] + ".onnx")
            raise ConfigError(
                f"{path} is ONNX Runtime's graph optimized for this machine's kind of device, not a file for "
                f"another server; give the portable {portable.name} beside it (Triton's ONNX Runtime optimizes it there)"
            )
    served = [read_artifact(path) for path in artifacts]
    base = name or served[0].default_name()

    groups: dict[str, dict[int, ServingArtifact]] = {}
    if per_precision:
        for artifact in served:
            model_name = f"{base}_{artifact.precision}"
            if model_name in groups:
                raise ConfigError(
                    f"two artifacts are {artifact.precision}; per_precision serves one per precision"
                )
            groups[model_name] = {version: artifact}
    else:
        groups[base] = {version + index: artifact for index, artifact in enumerate(served)}

    planned = []
    for model_name, versions in groups.items():
        config = model_config(list(versions.values()), model_name, options)
        planned.append((model_name, versions, config, _model_files(config, versions)))
    written = []
    for model_name, versions, config, files in planned:
        folder = repository / model_name
        _place_model(folder, files, force)
        logger.info("wrote Triton model %s (versions %s)", folder, sorted(versions))
        written.append(
            WrittenModel(
                model_name,
                folder,
                tuple(sorted(versions)),
                tuple(artifact.path for artifact in versions.values()),
                config,
            )
        )
    return RepositoryResult(repository, tuple(written))


@dataclass
class ModelCheck:
    """The findings for one model folder: ``problems`` make Triton fail or serve wrongly, ``notes`` do not."""

    name: str
    versions: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "versions": self.versions, "problems": self.problems, "notes": self.notes}


@dataclass(frozen=True)
class RepositoryCheck:
    """The result of :func:`check_repository`."""

    repository: Path
    models: tuple[ModelCheck, ...]

    @property
    def ok(self) -> bool:
        return bool(self.models) and not any(model.problems for model in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "ok": self.ok,
            "models": [m.to_dict() for m in self.models],
        }

    def to_text(self) -> str:
        if not self.models:
            return f"{self.repository}: no model folders"
        lines = []
        for model in self.models:
            status = "ok" if not model.problems else f"{len(model.problems)} problem(s)"
            lines.append(f"{model.name}: {status} (versions {', '.join(map(str, model.versions)) or 'none'})")
            lines.extend(f"  problem: {problem}" for problem in model.problems)
            lines.extend(f"  note: {note}" for note in model.notes)
        return "\n".join(lines)


def _is_onnx(path: Path) -> bool:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return bool(proto.graph.node) and proto.ir_version > 0


def _tensors(messages: Any) -> dict[str, TensorConfig]:
    names = schema().DataType.Name
    return {m.name: TensorConfig(m.name, names(m.data_type), tuple(m.dims)) for m in messages}


def _compare_tensors(
    kind: str, configured: dict[str, TensorConfig], actual: tuple[TensorConfig, ...]
) -> list[str]:
    problems = []
    actual_by_name = {tensor.name: tensor for tensor in actual}
    for missing in sorted(set(actual_by_name) - set(configured)):
        problems.append(f"the model's {kind} {missing!r} is not in config.pbtxt")
    for extra in sorted(set(configured) - set(actual_by_name)):
        problems.append(f"config.pbtxt names {kind} {extra!r}, which the model does not have")
    for tensor_name in sorted(set(configured) & set(actual_by_name)):
        mine, theirs = configured[tensor_name], actual_by_name[tensor_name]
        if mine.data_type != theirs.data_type:
            problems.append(
                f"{kind} {tensor_name!r}: config says {mine.data_type}, model has {theirs.data_type}"
            )
        compatible = len(mine.dims) == len(theirs.dims) and all(
            want in (-1, have) or have == -1 for want, have in zip(mine.dims, theirs.dims, strict=True)
        )
        if not compatible:
            problems.append(
                f"{kind} {tensor_name!r}: config dims {list(mine.dims)} disagree with the model's {list(theirs.dims)}"
            )
    return problems


def _check_version(
    folder: Path, version: str, platform: str, filename: str, check: ModelCheck
) -> ServingArtifact | None:
    """Check one version folder's model file against the config; returns what the file serves if readable."""
    path = folder / version / filename
    prefix = f"version {version}"
    if not path.is_file():
        others = [name for name in MODEL_FILES.values() if (folder / version / name).is_file()]
        hint = f" (it holds {others[0]}: is the platform right?)" if others else ""
        check.problems.append(f"{prefix}: {filename} is missing{hint}")
        return None
    onnx_file = _is_onnx(path)
    if platform == PLAN_PLATFORM and onnx_file:
        check.problems.append(f"{prefix}: {filename} is an ONNX model but the platform is {PLAN_PLATFORM}")
        return None
    if platform == ONNX_PLATFORM and not onnx_file:
        check.problems.append(
            f"{prefix}: {filename} is not an ONNX model but the platform is {ONNX_PLATFORM}"
        )
        return None
    if platform == PLAN_PLATFORM and not manifest_path(path).is_file():
        check.notes.append(f"{prefix}: no build manifest beside {filename}; its tensors cannot be checked")
        return None
    try:
        return read_artifact(path)
    except BadInputError as error:
        check.problems.append(f"{prefix}: {error}")
        return None


def _check_model(folder: Path) -> ModelCheck:
    check = ModelCheck(folder.name)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        check.problems.append(f"{CONFIG_FILE} is missing")
        return check
    try:
        config = parse_config(config_path.read_text(encoding="utf-8"), str(config_path))
    except (TritonConfigError, UnicodeDecodeError) as error:
        check.problems.append(str(error))
        return check
    if config.name and config.name != folder.name:
        check.problems.append(f"config name {config.name!r} differs from the folder name {folder.name!r}")
    versions = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    check.versions = [int(v) for v in versions]
    if not versions:
        check.problems.append(f"no version folder (such as {folder.name}/1/) holds a model")
    platform = config.platform or BACKEND_PLATFORMS.get(config.backend, "")
    if platform not in MODEL_FILES:
        check.notes.append(f"platform {config.platform or config.backend!r} is not one sedeploy checks")
        return check
    filename = config.default_model_filename or MODEL_FILES[platform]
    inputs, outputs = _tensors(config.input), _tensors(config.output)
    for version in versions:
        artifact = _check_version(folder, version, platform, filename, check)
        if artifact is None:
            continue
        check.problems.extend(
            f"version {version}: {p}" for p in _compare_tensors("input", inputs, artifact.inputs)
        )
        check.problems.extend(
            f"version {version}: {p}" for p in _compare_tensors("output", outputs, artifact.outputs)
        )
        if config.max_batch_size > artifact.max_batch:
            check.problems.append(
                f"version {version}: max_batch_size {config.max_batch_size} exceeds the model's {artifact.max_batch}"
            )
    for output in config.output:
        if output.label_filename:
            labels_path = folder / output.label_filename
            if not labels_path.is_file():
                check.problems.append(
                    f"output {output.name!r}: label file {output.label_filename} is missing"
                )
            elif output.dims:
                count = len([line for line in labels_path.read_text(encoding="utf-8").splitlines() if line])
                if count != output.dims[-1]:
                    check.problems.append(
                        f"{output.label_filename} has {count} labels but output {output.name!r} has {output.dims[-1]}"
                    )
    return check


def check_repository(repository: str | os.PathLike[str]) -> RepositoryCheck:
    """Validate every model folder of a repository: its config against Triton's schema, its files against the config."""
    repository = Path(repository)
    if not repository.exists():
        raise BadInputError(f"model repository {repository} does not exist; give the folder given to -o")
    if not repository.is_dir():
        raise BadInputError(f"model repository {repository} is not a folder; give the folder given to -o")
    folders = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    return RepositoryCheck(repository, tuple(_check_model(folder) for folder in folders))
