"""The Runner contract every backend honours: a numpy batch in, numpy logits out, context-managed.

As in Polygraphy, the base class owns the state checks (closed? wrong shape or
dtype?) and each backend implements only two hooks: ``_infer`` and ``_release``.
A runner holds its resources (session, engine, buffers) from construction until
``close()``; closing twice is harmless, calling a closed runner fails clearly.

On top of the raw call the base offers what a production pipeline wants, built
on :mod:`sedeploy.data` and the runner's :class:`~sedeploy.artifacts.metadata.ModelMetadata`:
``preprocess(images)`` (paths, PIL images or pixel arrays, with the artifact's own
preprocessing) and ``classify(images, top_k)`` (labels and probabilities).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, TypeAlias

import numpy as np

from sedeploy.errors import BadInputError, ConfigError, SedeployError

if TYPE_CHECKING:
    from PIL import Image

    from sedeploy.artifacts.metadata import ModelMetadata

logger = logging.getLogger(__name__)

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | BinaryIO | Image.Image | np.ndarray"
"""One image for :meth:`Runner.preprocess`: a file path, encoded bytes, an open binary file, a PIL image, or uint8
pixels (H, W) or (H, W, C)."""

_REFUSED_KINDS = {"U": "strings", "S": "bytes", "O": "Python objects", "V": "raw records", "M": "dates"}


class RunnerClosedError(SedeployError):
    """A runner was called after ``close()``."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, numpy dtype, shape with ``None`` for the dynamic batch, and the largest batch."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    max_batch: int | None = None

    def check(self, batch: np.ndarray) -> None:
        """Fail with one line unless ``batch`` fits this spec (batch size within ``max_batch`` is the runner's job)."""
        if batch.ndim != len(self.shape):
            raise BadInputError(
                f"input {self.name!r} expects {len(self.shape)} dimensions {self.describe()}, got shape {batch.shape}"
            )
        for expected, actual in zip(self.shape[1:], batch.shape[1:], strict=True):
            if expected is not None and expected != actual:
                raise BadInputError(f"input {self.name!r} expects shape {self.describe()}, got {batch.shape}")
        if batch.dtype != np.dtype(self.dtype):
            raise BadInputError(f"input {self.name!r} expects dtype {self.dtype}, got {batch.dtype}")

    def describe(self) -> str:
        return "(" + ", ".join("N" if dim is None else str(dim) for dim in self.shape) + ")"


@dataclass(frozen=True)
class Classification:
    """The ``top_k`` classes of one image, most probable first: class indices, labels and softmax probabilities."""

    indices: tuple[int, ...]
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]

    @property
    def label(self) -> str:
        """The most probable class's label."""
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "indices": list(self.indices),
            "labels": list(self.labels),
            "probabilities": [round(value, 6) for value in self.probabilities],
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, classes) logits, in float64 and stable for large values."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = values - np.max(values, axis=1, keepdims=True)
    exponents = np.exp(shifted)
    return exponents / np.sum(exponents, axis=1, keepdims=True)


def classify_logits(
    logits: np.ndarray, top_k: int = 5, labels: Sequence[str] | None = None
) -> list[Classification]:
    """The ``top_k`` classes of each row of (N, classes) logits; labels default to the class indices as text."""
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    probabilities = softmax(logits)
    classes = probabilities.shape[1]
    if labels is not None and len(labels) != classes:
        raise BadInputError(f"{len(labels)} labels for {classes} classes; the labels do not fit this model")
    count = min(top_k, classes)
    # A stable sort keeps ties in class order, so results do not depend on the platform.
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    results = []
    for row, indices in zip(probabilities, order, strict=True):
        results.append(
            Classification(
                indices=tuple(int(index) for index in indices),
                labels=tuple(labels[index] if labels is not None else str(index) for index in indices),
                probabilities=tuple(float(row[index]) for index in indices),
            )
        )
    return results


def _is_file(value: object) -> bool:
    """An open binary file (``io.BytesIO``, an upload's stream): it has ``read`` and is no array or image."""
    return callable(getattr(value, "read", None)) and not isinstance(value, np.ndarray)


class Runner(ABC):
    """Base of every backend's runner.

    Subclasses set ``input_spec``, ``output_spec`` and ``metadata`` (a
    :class:`~sedeploy.artifacts.metadata.ModelMetadata`, or None for a model without
    sedeploy metadata) in their constructor and implement ``_infer`` (one
    checked batch of at most ``input_spec.max_batch`` rows -> logits) and
    ``_release`` (free everything). ``backend`` names the backend; ``provider``
    says what actually runs the model (e.g. the ONNX Runtime execution
    provider), since backends may fall back silently otherwise.

    Calls may come from several threads at once; ``_infer`` must allow that.
    """

    backend: ClassVar[str] = "base"
    input_spec: TensorSpec
    output_spec: TensorSpec
    metadata: ModelMetadata | None = None
    provider: str = ""

    _closed: bool
    _close_lock: threading.Lock

    def __new__(cls, *args: Any, **kwargs: Any) -> Runner:
        # Per-instance close state, set before any subclass __init__ runs (subclasses need not call super):
        # a class-level lock would be one lock shared by every runner of every backend.
        runner = super().__new__(cls)
        runner._closed = False
        runner._close_lock = threading.Lock()
        return runner

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N, C, H, W) and return the logits (N, classes).

        Other float dtypes (float64 from numpy's defaults, float16) are converted
        to the input's dtype; strings, objects, integers and booleans are refused
        (raw pixels go through :meth:`preprocess`). An empty batch returns an
        empty (0, classes) array without running the model; a batch above
        ``input_spec.max_batch`` is run in pieces of that size and joined. NaN and
        infinity pass through: what the model makes of them is its output.
        """
        if self._closed:
            raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
        batch = self._as_input(batch)
        self.input_spec.check(batch)
        if len(batch) == 0:
            return np.empty(
                (0, *(dim or 0 for dim in self.output_spec.shape[1:])), dtype=self.output_spec.dtype
            )
        limit = self.input_spec.max_batch
        if limit is None or len(batch) <= limit:
            return self._infer(np.ascontiguousarray(batch))
        logger.debug("splitting a batch of %d into pieces of %d", len(batch), limit)
        parts = [
            self._infer(np.ascontiguousarray(batch[start : start + limit]))
            for start in range(0, len(batch), limit)
        ]
        return np.concatenate(parts, axis=0)

    def _as_input(self, batch: Any) -> np.ndarray:
        """``batch`` as an array of the input's dtype, converting other floats and refusing everything else."""
        try:
            array = np.asarray(batch)
        except (TypeError, ValueError) as error:
            raise BadInputError(
                f"input {self.input_spec.name!r} must be a numeric array {self.input_spec.describe()} ({error})"
            ) from None
        expected = np.dtype(self.input_spec.dtype)
        if array.dtype == expected:
            return array
        kind = array.dtype.kind
        if kind in _REFUSED_KINDS:
            raise BadInputError(
                f"input {self.input_spec.name!r} got {_REFUSED_KINDS[kind]} ({array.dtype}); give a {expected} "
                f"array {self.input_spec.describe()}, or image paths to preprocess()/classify()"
            )
        if kind != "f" or expected.kind != "f":
            raise BadInputError(
                f"input {self.input_spec.name!r} expects preprocessed {expected} values, got {array.dtype}; "
                "raw pixels go through runner.preprocess(images) first"
            )
        return array.astype(expected)

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch that already matches ``input_spec`` (1 to ``max_batch`` rows)."""

    @abstractmethod
    def _release(self) -> None:
        """Free the backend's resources; called once."""

    # Images in, classes out.

    def _require_metadata(self, purpose: str) -> ModelMetadata:
        if self.metadata is None:
            raise BadInputError(
                f"this model has no sedeploy metadata, so it cannot {purpose}; export it with `sedeploy export`, "
                "or preprocess the images yourself and call the runner on the batch"
            )
        return self.metadata

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Images to the model's input batch (N, C, H, W) with the artifact's own preprocessing.

        ``images`` is one image or a sequence: file paths, encoded image bytes (what a web service
        receives), open binary files such as ``io.BytesIO`` (all three decoded by
        :func:`sedeploy.data.load_image`, with its pixel limit and EXIF rotation), PIL images, or uint8 pixel
        arrays (H, W) / (H, W, C) with C in 1, 3, 4 (a 4-D uint8 array is N such images). Colour and
        grayscale are converted to the model's channels.
        """
        from PIL import Image

        from sedeploy.data import load_image, preprocess

        metadata = self._require_metadata("preprocess images")
        if isinstance(images, (str, os.PathLike, Image.Image, bytes, bytearray, memoryview)) or _is_file(
            images
        ):
            items: Sequence[Any] = [images]
        elif isinstance(images, np.ndarray):
            items = list(images) if images.ndim == 4 else [images]
        else:
            items = list(images)
        channels = metadata.in_chans
        rows = np.empty((len(items), *metadata.input_size), dtype=np.float32)
        for index, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                image = load_image(item, channels)
            elif isinstance(item, (bytes, bytearray, memoryview)):
                image = load_image(io.BytesIO(bytes(item)), channels)
            elif _is_file(item):
                image = load_image(item, channels)
            else:
                image = _image_of(item, channels, index)
            rows[index] = preprocess(image, metadata.preprocessing)
        return rows

    def classify(self, images: ImageInput | Sequence[ImageInput], top_k: int = 5) -> list[Classification]:
        """The ``top_k`` labels and probabilities for each image (see :meth:`preprocess` for what an image is)."""
        metadata = self._require_metadata("classify images")
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}")
        return classify_logits(self(self.preprocess(images)), top_k, metadata.labels)

    # Lifetime.

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Free the runner's resources; safe to call more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._release()

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def describe(self) -> str:
        """One line: backend, what runs it, and the input it takes."""
        spec = self.input_spec
        limit = f", batch <= {spec.max_batch}" if spec.max_batch else ""
        return f"{self.backend} ({self.provider or 'unknown provider'}): {spec.name} {spec.dtype} {spec.describe()}{limit}"


def _image_of(item: Any, channels: int, index: int) -> Image.Image:
    """A PIL image or uint8 pixel array as an ``L`` or ``RGB`` image for a model of ``channels`` channels."""
    from PIL import Image

    from sedeploy.data import to_channels

    if isinstance(item, Image.Image):
        return to_channels(item, channels)
    if not isinstance(item, np.ndarray):
        raise BadInputError(
            f"image {index} is a {type(item).__name__}; give a path, a PIL image or a uint8 array (H, W[, C])"
        )
    pixels = item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item
    if (
        pixels.dtype != np.uint8
        or pixels.ndim not in (2, 3)
        or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4))
    ):
        raise BadInputError(
            f"image {index} is a {item.dtype} array of shape {item.shape}; give uint8 pixels (H, W) or "
            "(H, W, C) with C in 1, 3, 4 (already preprocessed batches go straight to runner(batch))"
        )
    return to_channels(Image.fromarray(np.ascontiguousarray(pixels)), channels)
