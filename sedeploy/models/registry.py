"""A registry of named model constructors and each model's preprocessing defaults.

As in timm, every public model name is a tiny registered function, and one
per-model :class:`ModelDefaults` is the single source of truth for input size
and preprocessing: export writes it into the ONNX metadata, later stages read
it from there instead of asking the user again.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from sedeploy.errors import ConfigError
from sedeploy.models.defaults import ModelDefaults


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its constructor and its defaults."""

    name: str
    constructor: Callable[..., nn.Module]
    defaults: ModelDefaults


_REGISTRY: dict[str, ModelEntry] = {}
ZOO_MODULES = (
    "sedeploy.models.senet",
    "sedeploy.models.timm_names",
    "sedeploy.models.preact_resnet",
    "sedeploy.models.mobilenet",
)
"""Modules whose import registers the zoo's models."""


def register_model(
    defaults: ModelDefaults | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a constructor under its function name, with its preprocessing defaults."""

    def decorate(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = constructor.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, constructor, defaults or ModelDefaults())
        return constructor

    return decorate


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_zoo()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; an unknown name fails with the valid names."""
    _load_zoo()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_model(name: str, **options: Any) -> nn.Module:
    """Build the registered model ``name`` with ``options`` (num_classes, in_chans, reduction, ...).

    ``img_size`` (an int or ``(height, width)``) is accepted by every model: it sets
    the input size recorded in the model's defaults, not its weights.

    The returned module has a ``default_config`` attribute (:class:`ModelDefaults`)
    matching its options, and ``model_name``/``model_options`` recording how it was
    built, so export can write them into the ONNX file.
    """
    entry = get_entry(name)
    options = dict(options)
    img_size = options.pop("img_size", None)
    accepted = inspect.signature(entry.constructor).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(set(options) - set(accepted)) if not takes_any else []
    if unknown:
        valid = sorted(k for k, p in accepted.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
        raise ConfigError(
            f"{name} does not take option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}"
        )
    model = entry.constructor(**options)
    in_chans = int(options.get("in_chans", entry.defaults.input_size[0]))
    num_classes = int(options.get("num_classes", entry.defaults.num_classes))
    # Plain attributes (not parameters or submodules): nn.Module keeps them in its __dict__.
    vars(model).update(
        default_config=entry.defaults.for_options(in_chans, num_classes, _as_hw(img_size)),
        model_name=name,
        model_options=dict(options),
    )
    return model


def model_defaults(model: nn.Module) -> ModelDefaults | None:
    """The :class:`ModelDefaults` that :func:`create_model` attached to ``model``, or None for other modules."""
    defaults = vars(model).get("default_config")
    return defaults if isinstance(defaults, ModelDefaults) else None


def _as_hw(img_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if img_size is None:
        return None
    if isinstance(img_size, int):
        return (img_size, img_size)
    height, width = img_size
    return (int(height), int(width))


def _load_zoo() -> None:
    # Importing the zoo modules runs their @register_model decorators.
    for module in ZOO_MODULES:
        importlib.import_module(module)
