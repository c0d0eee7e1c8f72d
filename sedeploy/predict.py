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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedeploy.artifacts.manifest import manifest_path
from sedeploy.backends.base import Runner
from sedeploy.data import IMAGE_EXTENSIONS, SkippedFile, listed_images_among, scan_images
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import refuse_output_over_input, special_file_reason
from sedeploy.progress import progress_bar
from sedeploy.runtime import load
from sedeploy.scoring import DEFAULT_BATCH, JsonLinesOutput, Prediction, batch_size_for, score_batches

__all__ = ["DEFAULT_BATCH", "PredictReport", "Prediction", "collect_images", "input_files", "predict"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictReport:
    """One row per readable image, in input order, and the files that were skipped with why."""

    artifact: str
    runner: str
    top_k: int
    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedFile, ...]
    output: str | None = None
    """The JSON lines file the predictions went to (then ``predictions`` is empty: memory stays bounded)."""
    scored: int = 0
    """Images scored by this run (resumed ones not counted)."""
    resumed: int = 0
    """Images already in ``output`` and skipped by ``resume``."""
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "artifact": self.artifact,
            "runner": self.runner,
            "top_k": self.top_k,
            "predictions": [prediction.to_dict() for prediction in self.predictions],
            "skipped": [{"path": skip.path, "reason": skip.reason} for skip in self.skipped],
        }
        if self.output is not None:
            data.update(
                output=self.output, scored=self.scored, resumed=self.resumed, seconds=round(self.seconds, 3)
            )
        return data

    def summary(self) -> str:
        """One line: how many images were scored, at what rate, and where they went."""
        where = f" to {self.output}" if self.output else ""
        resumed = f", {self.resumed} already there" if self.resumed else ""
        return (
            f"scored {self.scored} image(s){where} in {self.seconds:.1f} s ({self.images_per_second:.1f} img/s)"
            f"{resumed}, {len(self.skipped)} skipped"
        )

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
        if self.output is not None:
            lines.append(self.summary())
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
    output: str | os.PathLike[str] | None = None,
    resume: bool = False,
    workers: int | None = None,
    ray: str | None = None,
    concurrency: int | None = None,
) -> PredictReport:
    """Classify every image in ``inputs`` (files and folders) with ``artifact`` (a path, or an open runner).

    Images are decoded on ``workers`` threads (default: the usable cores; 0: one after another on this
    thread) while the runner scores the batch before, in batches of ``batch`` (default: 32, or the model's
    max batch if smaller); an unreadable one is skipped with a warning. ``output``: a JSON lines file that
    gets one line per image as each batch finishes (the report then holds no predictions, so memory stays
    bounded); ``resume`` continues such a file, skipping the images already in it. ``progress`` shows a bar
    (with img/s) when a folder is among the inputs or ``output`` is given. ``ray``: score on a Ray Data actor
    pool instead (:func:`sedeploy.scoring.score_dataset`; ``"local"`` starts a local Ray, else a cluster
    address), with ``concurrency`` actors.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}", params=("batch",))
    if workers is not None and workers < 0:
        raise ConfigError(f"workers must be 0 or more, got {workers}", params=("workers",))
    if resume and output is None:
        raise ConfigError("resume continues an output file; give output too", params=("resume",))
    if not inputs:
        raise ConfigError("give at least one image file or folder")
    if output is not None:
        source = getattr(artifact, "model_path", None) if isinstance(artifact, Runner) else artifact
        pairs = input_files(source, inputs, [str(output)]) if source is not None else []
        refuse_output_over_input([("output", str(output))], pairs)
    if ray is not None:
        if isinstance(artifact, Runner):
            raise ConfigError("ray opens the artifact in each actor; give its path, not an open runner")
        return _predict_on_ray(str(artifact), inputs, ray, concurrency, top_k, batch, device, verify_hash, output,
                               resume)  # fmt: skip
    settings = _Settings(top_k, batch, progress, output, resume, workers)
    if isinstance(artifact, Runner):
        return _predict(artifact, str(getattr(artifact, "model_path", artifact.backend)), inputs, settings)
    with load(artifact, device=device, verify_hash=verify_hash) as runner:
        return _predict(runner, str(artifact), inputs, settings)


@dataclass(frozen=True)
class _Settings:
    top_k: int
    batch: int | None
    progress: bool
    output: str | os.PathLike[str] | None
    resume: bool
    workers: int | None


def _predict(
    runner: Runner, name: str, inputs: Sequence[str | os.PathLike[str]], settings: _Settings
) -> PredictReport:
    metadata = runner.metadata
    if metadata is None:
        raise BadInputError(
            f"{name} has no sedeploy metadata, so its preprocessing is unknown; export it again"
        )
    files, skipped, any_folder = collect_images(inputs)
    size = batch_size_for(runner, settings.batch)
    writer = JsonLinesOutput(settings.output, resume=settings.resume) if settings.output is not None else None
    resumed = 0
    if writer is not None and writer.done:
        before = len(files)
        files = [path for path in files if str(path) not in writer.done]
        resumed = before - len(files)
    predictions: list[Prediction] = []
    scored = 0
    start = time.perf_counter()
    show = settings.progress and (any_folder or writer is not None)
    try:
        with progress_bar(total=len(files), desc="predict", unit="img", enabled=show) as bar:
            for scored_batch in score_batches(
                runner, files, top_k=settings.top_k, batch=size, workers=settings.workers
            ):
                skipped.extend(scored_batch.skipped)
                scored += len(scored_batch.predictions)
                if writer is not None:
                    writer.write(scored_batch.predictions)
                else:
                    predictions.extend(scored_batch.predictions)
                bar.update(scored_batch.size)
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    if not files and not skipped and not resumed:
        raise BadInputError(
            f"no image files among the inputs (folders hold no {', '.join(IMAGE_EXTENSIONS)} files); "
            "give image files or folders of images"
        )
    if not scored and not resumed:
        first = f" (first: {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise BadInputError(
            f"no readable image among the inputs ({len(files)} file(s) found, {len(skipped)} skipped{first}); "
            "give image files or folders of images"
        )
    output = str(settings.output) if settings.output is not None else None
    report = PredictReport(
        name,
        runner.describe(),
        settings.top_k,
        tuple(predictions),
        tuple(skipped),
        output,
        scored,
        resumed,
        seconds,
    )
    if output is not None:
        logger.info("%s", report.summary())
    return report


def _predict_on_ray(
    artifact: str,
    inputs: Sequence[str | os.PathLike[str]],
    address: str,
    concurrency: int | None,
    top_k: int,
    batch: int | None,
    device: str | None,
    verify_hash: bool,
    output: str | os.PathLike[str] | None,
    resume: bool,
) -> PredictReport:
    from sedeploy.scoring import score_dataset

    files, skipped, _ = collect_images(inputs)
    if not files:
        raise BadInputError("no image files among the inputs; give image files or folders of images")
    before = len(files)
    result = score_dataset(
        artifact,
        [str(path) for path in files],
        output=output,
        resume=resume,
        top_k=top_k,
        batch=batch or DEFAULT_BATCH,
        concurrency=concurrency,
        address=None if address == "local" else address,
        device=device,
        verify_hash=verify_hash,
    )
    for skip in result.skipped:
        logger.warning("skipping %s: %s", skip.path, skip.reason)
    all_skipped = (*skipped, *result.skipped)
    resumed = before - result.scored - len(result.skipped) if output is not None else 0
    if not result.scored and not resumed:
        raise BadInputError(f"no readable image among the inputs ({before} file(s) found); give image files")
    runner = f"ray data: {result.actors} actor(s) x {result.cpus_per_actor:g} CPU"
    return PredictReport(
        artifact, runner, top_k, result.predictions, all_skipped, str(output) if output else None,
        result.scored, max(0, resumed), result.seconds,
    )  # fmt: skip
