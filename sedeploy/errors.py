"""The package's error types.

The library raises these; only the CLI turns them into one line and an exit
code. Each error carries the exit code the CLI uses: 2 when the user's own
arguments are wrong (a usage error), 1 when a valid request failed.
"""

from __future__ import annotations


class SedeployError(Exception):
    """Base of every error sedeploy raises on purpose; its text is one line naming the problem and the fix.

    Messages name the library's own parameters (``calib_size must be at least 1``; ``pass override=True``),
    so a Python caller reads the words it used; ``params`` lists names the message uses that are plain words
    (``labels``, ``device``). The CLI rewrites each into the command's flag (``--calib-size``, ``--override``).
    """

    exit_code = 1

    def __init__(self, *args: object, params: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.params = params


class ConfigError(SedeployError, ValueError):
    """An unknown model name or an invalid model option: the request itself is wrong."""

    exit_code = 2


class BadInputError(SedeployError, ValueError):
    """A file or value given to sedeploy cannot be used (missing, truncated, wrong kind)."""


class MissingDependencyError(SedeployError, ImportError):
    """An optional package is needed for this operation; the message names the extra to install."""


class UnsafeCheckpointError(BadInputError):
    """A PyTorch checkpoint needs arbitrary unpickling (code execution) to load; sedeploy refuses it."""


class WeightsMismatchError(BadInputError):
    """A checkpoint's tensors do not fit the model: missing or unexpected keys, or different shapes."""


class ExportError(SedeployError):
    """The ONNX export itself failed or produced a graph that does not pass validation."""


class ParityError(ExportError):
    """The exported model's outputs differ from PyTorch's beyond the allowed tolerance."""
