"""Imports of optional packages, each failing with the extra that provides it.

:data:`EXTRAS` is the one place that says which extra brings which package; callers name only the module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from sedeploy.errors import MissingDependencyError

EXTRAS: dict[str, str] = {
    "onnxruntime": "cpu",  # or gpu: onnxruntime-gpu installs the same package
    "onnxconverter_common": "cpu",
    "matplotlib": "plot",
    "openvino": "openvino",
    "nncf": "openvino",
    "tensorrt": "tensorrt",
    "pycuda": "tensorrt",
    "pytriton": "serve",
    "tritonclient": "triton",
    "sklearn": "test",
}
"""Top-level package -> the ``sedeploy[extra]`` that installs it."""


def import_optional(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` and return it, or raise :class:`MissingDependencyError` naming the extra to install.

    ``extra`` overrides :data:`EXTRAS` where one package comes with several extras (``tritonclient.http``:
    ``serve``).
    """
    chosen = extra or EXTRAS.get(module.split(".")[0])
    try:
        return importlib.import_module(module)
    except ImportError as error:
        fix = (
            f"install it with: pip install 'sedeploy[{chosen}]'"
            if chosen
            else f"install {module.split('.')[0]}"
        )
        raise MissingDependencyError(
            f"{module} is needed for this step but cannot be imported ({error}); {fix}"
        ) from None
