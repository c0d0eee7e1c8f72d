"""``sedeploy verify``: an artifact's parity with its FP32 reference (and accuracy where labels exist).

The check itself is machinery (:mod:`sedeploy.measure.verification`), shared with ``optimize``, which verifies
each candidate on held-out data; this module is the command's face. ``verify(..., layers=True)`` adds the
per-layer INT8 report (:mod:`sedeploy.measure.layers`) on the first :data:`LAYER_IMAGES` inputs.
"""

from sedeploy.compare import DEFAULT_THRESHOLDS
from sedeploy.measure.verification import (
    DEFAULT_BATCH,
    DEFAULT_IMAGES,
    DEFAULT_SYNTHETIC,
    LAYER_IMAGES,
    VerifyReport,
    find_reference,
    synthetic_inputs,
    verify,
)

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_IMAGES",
    "DEFAULT_SYNTHETIC",
    "DEFAULT_THRESHOLDS",
    "LAYER_IMAGES",
    "VerifyReport",
    "find_reference",
    "synthetic_inputs",
    "verify",
]
