"""A user's own model: ``package.module:factory`` called with options, checked to return an ``nn.Module``.

Shared by export and the PyTorch runner, so both resolve a user's factory the same way.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from torch import nn

from sedeploy.errors import ConfigError


def load_model_factory(target: str, **options: Any) -> nn.Module:
    """Call ``package.module:factory`` (with ``options`` as keyword arguments) and return its ``nn.Module``.

    The current folder is importable during the call, as with ``python -m``.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"model {target!r} is not package.module:factory, e.g. mypkg.nets:build_model", params=("model",)
        )
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"model {target}: cannot import {module_name} ({error}); install it or run from its folder",
            params=("model",),
        ) from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise ConfigError(f"model {target}: {module_name} has no callable {attribute}", params=("model",))
    try:
        model = factory(**options)
    except TypeError as error:
        raise ConfigError(
            f"model {target}: calling {attribute} failed ({error}); check its options", params=("model",)
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {target}: {attribute} returned a {type(model).__name__}, not an nn.Module",
            params=("model",),
        )
    return model
