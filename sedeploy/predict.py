"""``sedeploy predict``: labels and probabilities for image files and folders, in batches.

Folders are read recursively (:func:`sedeploy.data.scan_images`: image
extensions only, hidden entries skipped, sorted by path); files named directly
are tried whatever their extension. A file that cannot be decoded, or a path
that does not exist, is skipped with a warning and listed in the report; the
run fails only when no image at all could be read. Only regular files are read:
a pipe, socket or device (or a link to one) in a folder is never opened, and all
of them are named in one warning (``skipped N files that are not regular
files ...``); named directly, one is refused (skipped, with what it is).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.artifacts.manifest import manifest_path
from sedeploy.backends.base import Classification, Runner, classify_logits
from sedeploy.data import IMAGE_EXTENSIONS, SkippedFile, listed_images_among, scan_images
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import special_file_reason
from sedeploy.progress import progress_bar
from sedeploy.runtime import load

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 32


@dataclass(frozen=True)
class Prediction:
    """One image's path and its top classes."""

    path: str
    classification: Classification

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, **self.classification.to_dict()}


@dataclass(frozen=True)
class PredictReport:
    """One row per readable image, in input order, and the files that were skipped with why."""

    artifact: str
    runner: str
    top_k: int
    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedFile, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "runner": self.runner,
            "top_k": self.top_k,
            "predictions": [prediction.to_dict() for prediction in self.predictions],
            "skipped": [{"path": skip.path, "reason": skip.reason} for skip in self.skipped],
        }

    def to_text(self) -> str:
        lines = []
        for prediction in self.predictions:
            classes = ", ".join(
                f"{label} {probability:.4f}"
                for label, probability in zip(
                    prediction.classification.labels, prediction.classification.probabilities, strict=True
                )
            )
            lines.append(f"{prediction.path}\t{classes}")
        lines.extend(f"skipped {skip.path}: {skip.reason}" for skip in self.skipped)
        return "\n".join(lines)


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[SkippedFile], bool]:
    """Files to predict on (folders expanded), paths skipped before reading, and whether any input was a folder.

    Skipped: paths that do not exist, and pipes, sockets and devices (or links to
    them) named directly or met in a folder; those in folders are named in one
    warning per folder.
    """
    files: list[Path] = []
    skipped: list[SkippedFile] = []
    any_folder = False
    for item in inputs:
        path = Path(item)
        special = special_file_reason(path)
        if path.is_dir():
            any_folder = True
            listing = scan_images(path)
            files.extend(entry for entry, _ in listing.entries)
            skipped.extend(SkippedFile(str(path / skip.path), skip.reason) for skip in listing.not_regular)
            line = listing.not_regular_line()
            if line is not None:
                logger.warning(line)
        elif special is not None:
            skipped.append(SkippedFile(str(path), f"{special}, not a regular file"))
            logger.warning("skipping %s: %s, not a regular file", path, special)
        elif path.is_file():
            files.append(path)
        else:
            skipped.append(SkippedFile(str(path), "does not exist"))
            logger.warning("skipping %s: does not exist", path)
    return files, skipped, any_folder


def input_files(
    artifact: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], outputs: Sequence[str | None]
) -> list[tuple[str, Path]]:
    """The files ``predict`` reads that any of ``outputs`` could land on, as (description, path) pairs.

    For :func:`sedeploy.files.refuse_output_over_input` before a prediction whose
    report goes to a file: the artifact and its manifest, images named directly,
    and those of ``outputs`` that are images of a folder given (no folder walk).
    """
    pairs = [("the artifact", Path(artifact)), ("the artifact's manifest", manifest_path(artifact))]
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pairs.extend(("an image", image) for image in listed_images_among(path, outputs))
        else:
            pairs.append(("an image", path))
    return pairs


def predict(
    artifact: str | os.PathLike[str] | Runner,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    top_k: int = 5,
    batch: int | None = None,
    device: str | None = None,
    verify_hash: bool = True,
    progress: bool = False,
) -> PredictReport:
    """Classify every image in ``inputs`` (files and folders) with ``artifact`` (a path, or an open runner).

    Images are decoded one by one (an unreadable one is skipped with a warning)
    and run in batches of ``batch`` (default: 32, or the model's max batch if
    smaller). ``progress`` shows a bar when a folder is among the inputs.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}", params=("batch",))
    if not inputs:
        raise ConfigError("give at least one image file or folder")
    if isinstance(artifact, Runner):
        return _predict(
            artifact, str(getattr(artifact, "model_path", artifact.backend)), inputs, top_k, batch, progress
        )
    with load(artifact, device=device, verify_hash=verify_hash) as runner:
        return _predict(runner, str(artifact), inputs, top_k, batch, progress)


def _predict(
    runner: Runner,
    name: str,
    inputs: Sequence[str | os.PathLike[str]],
    top_k: int,
    batch: int | None,
    progress: bool,
) -> PredictReport:
    metadata = runner.metadata
    if metadata is None:
        raise BadInputError(
            f"{name} has no sedeploy metadata, so its preprocessing is unknown; export it again"
        )
    files, skipped, any_folder = collect_images(inputs)
    size = batch or min(DEFAULT_BATCH, runner.input_spec.max_batch or DEFAULT_BATCH)
    predictions: list[Prediction] = []
    with progress_bar(total=len(files), desc="predict", unit="img", enabled=progress and any_folder) as bar:
        for start in range(0, len(files), size):
            paths, rows = [], []
            for path in files[start : start + size]:
                try:
                    rows.append(runner.preprocess(path)[0])
                    paths.append(path)
                except BadInputError as error:
                    reason = getattr(error, "reason", str(error))
                    logger.warning("skipping %s: %s", path, reason)
                    skipped.append(SkippedFile(str(path), reason))
            if rows:
                classes = classify_logits(runner(np.stack(rows)), top_k, metadata.labels)
                predictions.extend(Prediction(str(path), c) for path, c in zip(paths, classes, strict=True))
            bar.update(min(size, len(files) - start))
    if not files and not skipped:
        raise BadInputError(
            f"no image files among the inputs (folders hold no {', '.join(IMAGE_EXTENSIONS)} files); "
            "give image files or folders of images"
        )
    if not predictions:
        first = f" (first: {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise BadInputError(
            f"no readable image among the inputs ({len(files)} file(s) found, {len(skipped)} skipped{first}); "
            "give image files or folders of images"
        )
    return PredictReport(name, runner.describe(), top_k, tuple(predictions), tuple(skipped))
