"""The Runner contract every backend honours: a numpy batch in, numpy logits out, context-managed.

As in Polygraphy, the base class owns the state checks (closed? wrong shape or
dtype?) and each backend implements only two hooks: ``_infer`` and ``_release``.
A runner holds its resources (session, engine, buffers) from construction until
``close()``; closing twice is harmless, calling a closed runner fails clearly.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from sedeploy.errors import BadInputError, SedeployError


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


class Runner(ABC):
    """Base of every backend's runner.

    Subclasses set ``input_spec``, ``output_spec`` and ``metadata`` in their
    constructor and implement ``_infer`` (one checked batch -> logits) and
    ``_release`` (free everything). ``backend`` names the backend;
    ``provider`` says what actually runs the model (e.g. the ONNX Runtime
    execution provider), since backends may fall back silently otherwise.
    """

    backend: ClassVar[str] = "base"
    input_spec: TensorSpec
    output_spec: TensorSpec
    metadata: Any
    provider: str = ""

    _closed: bool = False
    _close_lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N, C, H, W) and return the logits (N, classes)."""
        if self._closed:
            raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
        batch = np.asarray(batch)
        self.input_spec.check(batch)
        return self._infer(np.ascontiguousarray(batch))

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch that already matches ``input_spec``."""

    @abstractmethod
    def _release(self) -> None:
        """Free the backend's resources; called once."""

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
