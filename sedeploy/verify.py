"""``sedeploy verify``: an artifact's parity with its FP32 reference (and accuracy where labels exist).

The check itself is machinery (:mod:`sedeploy.measure.verification`), shared with ``optimize``, which verifies
each candidate on held-out data; this module is the command's face.
"""

from sedeploy.compare import DEFAULT_THRESHOLDS
from sedeploy.measure.verification import (
    DEFAULT_BATCH,
    DEFAULT_IMAGES,
    DEFAULT_SYNTHETIC,
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
    "VerifyReport",
    "find_reference",
    "synthetic_inputs",
    "verify",
]
