"""``sedeploy.load``: one call that opens any sedeploy artifact as a :class:`~sedeploy.backends.base.Runner`.

The artifact says what runs it:

==========================================  =====================================================
``model.engine`` / ``model.plan``            TensorRT (:class:`~sedeploy.backends.tensorrt.TensorRTRunner`)
``model*.onnx``                              ONNX Runtime (:class:`~sedeploy.backends.onnxruntime.OnnxRuntimeRunner`)
``model*.xml`` (+ ``.bin``)                  OpenVINO (:class:`~sedeploy.backends.openvino.OpenVinoRunner`)
weights (``.safetensors``, ``.pt``, ...)      PyTorch reference (:class:`~sedeploy.backends.torch.TorchRunner`)
architecture name or ``pkg.mod:factory``     PyTorch reference with random weights
==========================================  =====================================================

``backend=`` overrides the choice where it makes sense (an ``.onnx`` file is
never run by PyTorch, nor a weights file by ONNX Runtime). Every other keyword goes
to the runner's constructor; an unknown one fails with the ones it takes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from sedeploy.artifacts.naming import ARTIFACT_BACKENDS, artifact_backend
from sedeploy.backends.base import Runner
from sedeploy.errors import ConfigError

BACKENDS = (*ARTIFACT_BACKENDS, "torch")


def load(
    path: str | os.PathLike[str],
    backend: str | None = None,
    device: str | int | None = None,
    *,
    verify_hash: bool = True,
    **options: Any,
) -> Runner:
    """Open ``path`` as a runner: ``runner(batch)``, ``runner.classify(images)``, ``with``/``close()``.

    ``verify_hash``: an artifact with a build manifest beside it is refused
    (:class:`~sedeploy.artifacts.manifest.ManifestError`) unless its sha256 matches the
    manifest's; ``False`` skips hashing (large engines in hot paths) but still
    reads the manifest. Files without a manifest (an exported ONNX, a weights
    file) have nothing to verify; a TensorRT engine must have one.

    ``backend``: ``onnxruntime``, ``tensorrt``, ``openvino`` or ``torch`` (default:
    from the artifact, see the module docstring). ``device``: ONNX Runtime ``cpu``,
    ``cuda[:N]``, ``tensorrt[:N]``; TensorRT a CUDA device index (or ``cuda:N``);
    OpenVINO its device name (default ``CPU``);
    PyTorch a torch device. ``options`` go to the runner (e.g. ``threads`` for
    ONNX Runtime, ``hint`` for OpenVINO, ``contexts``/``cuda_graph`` for TensorRT, ``metadata``/``arch``
    for PyTorch). Options the artifact's manifest records under ``runner_defaults`` (``sedeploy optimize``
    chose them on this machine) apply unless given here.
    """
    kind = artifact_backend(path)
    if kind != "torch":
        options = {**recorded_runner_defaults(path), **options}
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend is not None and backend != kind:
        raise ConfigError(
            f"{path} is run by {kind}, not {backend}"
            + (
                "; build a TensorRT engine with `sedeploy build-engine --backend tensorrt`, or use ONNX Runtime's "
                "TensorRT provider with device='tensorrt'"
                if kind == "onnxruntime" and backend == "tensorrt"
                else ""
            )
        )
    if kind == "tensorrt":
        from sedeploy.backends.tensorrt import TensorRTRunner

        return _construct(
            TensorRTRunner, path, device=_cuda_index(device), verify_hash=verify_hash, **options
        )
    if kind == "onnxruntime":
        from sedeploy.backends.onnxruntime import OnnxRuntimeRunner

        return _construct(
            OnnxRuntimeRunner, path, device=_text_device(device), verify_hash=verify_hash, **options
        )
    if kind == "openvino":
        from sedeploy.backends.openvino import OpenVinoRunner

        return _construct(
            OpenVinoRunner, path, device=_text_device(device), verify_hash=verify_hash, **options
        )
    from sedeploy.optional import import_optional

    # A weights file or zoo name runs on PyTorch: without it, one line naming the extra.
    import_optional("torch")
    from sedeploy.backends.torch import TorchRunner

    return _construct(TorchRunner, path, device=_text_device(device), **options)


def recorded_runner_defaults(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``runner_defaults`` in the manifest beside ``path``; {} without a readable one (the runner judges it)."""
    from sedeploy.artifacts.manifest import ManifestError, manifest_path, read_manifest

    if not manifest_path(path).is_file():
        return {}
    try:
        return dict(read_manifest(path).runner_defaults)
    except ManifestError:
        return {}


def _construct(runner_type: Callable[..., Runner], path: str | os.PathLike[str], **options: Any) -> Runner:
    """``runner_type(path, **options)``, with an unknown option named as a usage error instead of a TypeError."""
    accepted = [
        name
        for name, parameter in inspect.signature(runner_type).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{getattr(runner_type, '__name__', 'the runner')} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    if options.get("device") is None:
        options.pop("device", None)
    return runner_type(path, **options)


def _cuda_index(device: str | int | None) -> int | None:
    """A TensorRT device: an index, ``"N"``, ``"cuda"`` or ``"cuda:N"``."""
    if device is None or isinstance(device, int):
        return device
    kind, _, index = device.strip().lower().partition(":")
    if kind.isdigit() and not index:
        return int(kind)
    if kind in ("cuda", "gpu") and (not index or index.isdigit()):
        return int(index or 0)
    raise ConfigError(f"TensorRT runs on a CUDA device; give its index or cuda:N, not {device!r}")


def _text_device(device: str | int | None) -> str | None:
    return f"cuda:{device}" if isinstance(device, int) else device
