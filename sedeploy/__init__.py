"""sedeploy: SE-ResNet from training checkpoint to fast, verified inference on NVIDIA GPUs and edge devices."""

from __future__ import annotations

from sedeploy.complexity import Complexity, estimate_complexity
from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError, SedeployError
from sedeploy.registry import ModelDefaults, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "BadInputError",
    "Complexity",
    "ConfigError",
    "MissingDependencyError",
    "ModelDefaults",
    "SedeployError",
    "__version__",
    "create_model",
    "estimate_complexity",
    "list_models",
]
