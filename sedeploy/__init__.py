"""sedeploy: SE-ResNet from training checkpoint to fast, verified inference on NVIDIA GPUs and edge devices."""

from __future__ import annotations

from sedeploy._version import __version__
from sedeploy.artifacts.metadata import ModelMetadata, read_metadata
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
from sedeploy.export import ExportResult, export_onnx
from sedeploy.models.checkpoint import save_checkpoint
from sedeploy.models.complexity import Complexity, estimate_complexity
from sedeploy.models.registry import ModelDefaults, create_model, list_models
from sedeploy.optimize import OptimizeReport, optimize  # the function shadows the module's name on purpose
from sedeploy.runtime import load
from sedeploy.serving.server import serve

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
