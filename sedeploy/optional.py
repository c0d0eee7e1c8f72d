"""Imports of optional packages, each failing with the extra that provides it.

:data:`EXTRAS` is the one place that says which extra brings which package; callers name only the module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from sedeploy.errors import MissingDependencyError

EXTRAS: dict[str, str] = {
    "torch": "torch",  # export, train, the demo, the PyTorch runner (weights files, zoo names)
    "onnxscript": "torch",
    "safetensors": "torch",
    "onnxruntime": "cpu",  # or gpu: onnxruntime-gpu installs the same package
    "onnxconverter_common": "cpu",
    "matplotlib": "plot",
    "ray": "ray",
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
    ``serve``). A sedeploy module (``sedeploy.export``) that fails on a missing optional package names that
    package's extra (``torch``): the stages that need PyTorch say so in one line.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        needed = missing if missing in EXTRAS and missing != module.split(".")[0] else module
        chosen = extra or EXTRAS.get(needed.split(".")[0])
        fix = (
            f"install it with: pip install 'sedeploy[{chosen}]'"
            if chosen
            else f"install {needed.split('.')[0]}"
        )
        raise MissingDependencyError(
            f"{needed} is needed for this step but cannot be imported ({error}); {fix}"
        ) from None
