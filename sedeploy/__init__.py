"""sedeploy: SE-ResNet from training checkpoint to fast, verified inference on NVIDIA GPUs and edge devices.

The package face is lazy: ``import sedeploy`` loads only the version and the error types, and each public name
below is imported from its home the first time it is used (module ``__getattr__``), so a process that runs
an artifact never loads PyTorch and ``sedeploy --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from sedeploy._version import __version__
from sedeploy.errors import (
    BadInputError,
    ConfigError,
    ExportError,
    MissingDependencyError,
    ParityError,
    SedeployError,
    UnsafeCheckpointError,
    WeightsMismatchError,
)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use
    from sedeploy.artifacts.metadata import ModelMetadata, read_metadata
    from sedeploy.export import ExportResult, export_onnx
    from sedeploy.models.checkpoint import save_checkpoint
    from sedeploy.models.complexity import Complexity, estimate_complexity
    from sedeploy.models.defaults import ModelDefaults
    from sedeploy.models.registry import create_model, list_models
    from sedeploy.optimize import OptimizeReport, optimize
    from sedeploy.runtime import load
    from sedeploy.serving.server import serve

_LAZY: dict[str, str] = {
    "ModelMetadata": "sedeploy.artifacts.metadata",
    "read_metadata": "sedeploy.artifacts.metadata",
    "ExportResult": "sedeploy.export",
    "export_onnx": "sedeploy.export",
    "save_checkpoint": "sedeploy.models.checkpoint",
    "Complexity": "sedeploy.models.complexity",
    "estimate_complexity": "sedeploy.models.complexity",
    "ModelDefaults": "sedeploy.models.defaults",
    "create_model": "sedeploy.models.registry",
    "list_models": "sedeploy.models.registry",
    "OptimizeReport": "sedeploy.optimize",
    "optimize": "sedeploy.optimize",
    "load": "sedeploy.runtime",
    "serve": "sedeploy.serving.server",
}
"""Public name -> the module that defines it, imported when the name is first read."""

__all__ = [
    "BadInputError",
    "Complexity",
    "ConfigError",
    "ExportError",
    "ExportResult",
    "MissingDependencyError",
    "ModelDefaults",
    "ModelMetadata",
    "OptimizeReport",
    "ParityError",
    "SedeployError",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "__version__",
    "create_model",
    "estimate_complexity",
    "export_onnx",
    "list_models",
    "load",
    "optimize",
    "read_metadata",
    "save_checkpoint",
    "serve",
]


if not TYPE_CHECKING:  # hidden from type checkers, which see the imports above (a typo stays an error)

    def __getattr__(name: str) -> Any:
        """Import a public name from its home on first use and keep it here (later reads cost nothing)."""
        home = _LAZY.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Face(types.ModuleType):
    """The package module: ``sedeploy.optimize`` stays the function although a submodule has that name.

    Importing a submodule binds it on its package (``setattr(sedeploy, "optimize", <module>)``); the eager
    face re-bound the function over it, the lazy one refuses that binding instead (``sys.modules`` still
    holds the module for ``from sedeploy.optimize import ...``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "optimize" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face
