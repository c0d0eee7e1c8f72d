"""Buffer sizes: plain functions of shapes and dtypes, testable without a GPU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sedeploy.errors import BadInputError


def volume(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of ``shape`` (1 for a scalar); every dimension must be known."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise BadInputError(f"shape {tuple(shape)} has an unknown dimension; resolve it before sizing")
        count *= int(dim)
    return count


def nbytes_for(shape: Sequence[int], dtype: np.dtype[Any] | type | str) -> int:
    """Bytes needed to hold a tensor of ``shape`` and ``dtype``."""
    return volume(shape) * np.dtype(dtype).itemsize


def max_shape(shape: Sequence[int], max_batch: int) -> tuple[int, ...]:
    """``shape`` with a dynamic (negative) leading batch dimension replaced by ``max_batch``.

    Only the batch axis may be dynamic: buffers are allocated once for the largest
    batch, so any other unknown dimension is an error.
    """
    if max_batch < 1:
        raise BadInputError(f"max_batch must be at least 1, got {max_batch}")
    if not shape:
        raise BadInputError("a batched tensor needs at least one dimension")
    resolved = (max_batch if shape[0] < 0 else int(shape[0]), *(int(dim) for dim in shape[1:]))
    if any(dim < 0 for dim in resolved[1:]):
        raise BadInputError(f"shape {tuple(shape)} is dynamic beyond the batch axis; only the batch may vary")
    return resolved


@dataclass(frozen=True)
class TensorLayout:
    """One I/O tensor as buffers see it: name, numpy dtype, shape at the largest batch, direction."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    is_input: bool

    @property
    def nbytes(self) -> int:
        return nbytes_for(self.shape, self.dtype)

    @property
    def row_nbytes(self) -> int:
        """Bytes of one batch item."""
        return nbytes_for(self.shape[1:], self.dtype)
