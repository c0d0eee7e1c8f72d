"""Which CUDA implementation runs: ``SEDEPLOY_CUDA`` if set, else pycuda where installed, else cuda-python.

The choice is made once per process (once per value of ``SEDEPLOY_CUDA``) and each
implementation is initialised once: every resource keeps the implementation it was
made with, so copies never ask again (where pycuda is absent, asking means a failed
``import pycuda.driver`` each time, about 60 us) and never mix implementations.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Mapping

from sedeploy.backends.cuda_memory.interface import CUDA_EXTRA, EXTRA, CudaApi
from sedeploy.errors import ConfigError, MissingDependencyError

ENV_VAR = "SEDEPLOY_CUDA"
"""Environment variable choosing the implementation: ``pycuda`` or ``cuda-python``."""
IMPLEMENTATIONS = ("pycuda", "cuda-python")

_api_lock = threading.Lock()
_apis: dict[str, CudaApi] = {}
_default: tuple[str, CudaApi] | None = None
"""The ``SEDEPLOY_CUDA`` value the default was chosen under, and the implementation chosen."""


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def cuda_python_importable() -> bool:
    """Whether cuda-python imports in either layout (``cuda.bindings`` or ``cuda.cuda``/``cuda.cudart``)."""
    return (_importable("cuda.bindings.driver") and _importable("cuda.bindings.runtime")) or (
        _importable("cuda.cuda") and _importable("cuda.cudart")
    )


def _requested(environ: Mapping[str, str] | None = None) -> str:
    return (environ if environ is not None else os.environ).get(ENV_VAR, "").strip().lower()


def choose_implementation(environ: Mapping[str, str] | None = None) -> str:
    """``pycuda`` or ``cuda-python``: ``SEDEPLOY_CUDA`` if set, else pycuda where installed, else cuda-python.

    Raises :class:`MissingDependencyError` (naming both extras) when neither imports,
    and :class:`ConfigError` for an unknown ``SEDEPLOY_CUDA``.
    """
    requested = _requested(environ)
    if requested:
        if requested == "cuda_python":
            requested = "cuda-python"
        if requested not in IMPLEMENTATIONS:
            raise ConfigError(f"{ENV_VAR}={requested!r} is not one of {', '.join(IMPLEMENTATIONS)}")
        return requested
    if _importable("pycuda.driver"):
        return "pycuda"
    if cuda_python_importable():
        return "cuda-python"
    raise MissingDependencyError(
        "neither pycuda nor cuda-python can be imported, and one is needed for GPU memory; install pycuda "
        f"with: pip install 'sedeploy[{EXTRA}]', or cuda-python with: pip install 'sedeploy[{CUDA_EXTRA}]'"
    )


def _instance(chosen: str) -> CudaApi:
    """The initialised implementation ``chosen`` (call with ``_api_lock`` held)."""
    instance = _apis.get(chosen)
    if instance is None:
        if chosen == "pycuda":
            from sedeploy.backends.cuda_memory.pycuda_impl import PycudaApi

            instance = PycudaApi()
        elif chosen == "cuda-python":
            from sedeploy.backends.cuda_memory.cuda_python_impl import CudaPythonApi

            instance = CudaPythonApi()
        else:
            raise ConfigError(
                f"unknown CUDA implementation {chosen!r}; use one of {', '.join(IMPLEMENTATIONS)}"
            )
        _apis[chosen] = instance
    return instance


def api(name: str | None = None) -> CudaApi:
    """The initialised implementation ``name`` (default: :func:`choose_implementation`, resolved once)."""
    global _default
    if name is not None:
        with _api_lock:
            return _instance(name)
    requested = _requested()
    chosen = _default
    if chosen is not None and chosen[0] == requested:
        return chosen[1]
    with _api_lock:
        if _default is None or _default[0] != requested:
            _default = (requested, _instance(choose_implementation()))
        return _default[1]


def reset_implementations() -> None:
    """Forget the initialised implementations and the default choice (tests swap them)."""
    global _default
    with _api_lock:
        _apis.clear()
        _default = None
