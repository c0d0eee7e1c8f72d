"""Imports of optional packages, each failing with the extra that provides it."""

from __future__ import annotations

import importlib
from types import ModuleType

from sedeploy.errors import MissingDependencyError


def import_optional(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'sedeploy[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{module} is needed for this step but cannot be imported ({error}); "
            f"install it with: pip install 'sedeploy[{extra}]'"
        ) from None
