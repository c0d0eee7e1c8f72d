"""The PyTorch reference runner: the model as trained, from a weights file, an architecture name or a module.

It answers the question every other artifact is checked against: what does the
original model say for this input? Weights load through :mod:`sedeploy.models.checkpoint`
(any supported layout, never unpickling code) into a zoo model from
:mod:`sedeploy.models.registry` or a ``package.module:factory`` model; the architecture
and options come from the weights' own sedeploy record, from an artifact's
metadata (``metadata=``), or are given (``arch=``, ``model_options=``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sedeploy.artifacts.metadata import ModelMetadata, Preprocessing, channel_order_for
from sedeploy.backends.base import Runner, RunnerClosedError, TensorSpec
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.models.checkpoint import build_model, load_weights, read_checkpoint
from sedeploy.models.complexity import estimate_complexity
from sedeploy.models.record import RECORD_NAME, TrainingRecord, find_training_record
from sedeploy.models.registry import ModelDefaults, list_models, model_defaults

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32
"""Largest batch one forward pass takes when no metadata says otherwise (bigger batches are split)."""


class TorchRunner(Runner):
    """Runs a PyTorch model in eval mode under ``torch.inference_mode`` (thread-safe for concurrent callers).

    ``source``: a weights file (safetensors or PyTorch state dict), a zoo
    architecture name (random weights, logged as a warning), a
    ``package.module:factory`` target, or an ``nn.Module``. ``metadata``: the
    artifact's :class:`ModelMetadata` whose ``arch`` and ``options`` build the
    model and whose preprocessing the runner uses; without it they are derived
    from the model's registry defaults as export does. ``weights_match`` is
    False when the metadata records a weights hash that differs from the file's.

    A weights file with a training record beside it (``model.json``) runs at the record's input size,
    preprocessing and labels; one without a record needs ``metadata=`` (its size would be a guess). A zoo
    name alone builds random weights only with ``random_weights=True``.
    """

    backend = "torch"

    def __init__(
        self,
        source: str | os.PathLike[str] | nn.Module,
        *,
        arch: str | None = None,
        metadata: ModelMetadata | None = None,
        model_options: Mapping[str, Any] | None = None,
        layout: str = "auto",
        device: str | None = None,
        max_batch: int | None = None,
        random_weights: bool = False,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        self._device = _torch_device(device)
        self.weights_path: Path | None = None
        self.weights_match: bool | None = None
        self.record: TrainingRecord | None = None
        self._random_weights = random_weights
        model = self._build(source, arch, metadata, dict(model_options or {}), layout)
        model.eval().to(self._device)
        self._model: nn.Module | None = model
        if metadata is None and self.record is not None:
            metadata = _record_metadata(model, self.record, max_batch)
        elif metadata is None and self.weights_path is not None:
            raise ConfigError(
                f"{self.weights_path} has no training record ({RECORD_NAME} beside it) that says its input size "
                "and preprocessing; export it with sedeploy export (img_size given) and load the ONNX, or pass "
                "metadata= (sedeploy.read_metadata of its exported ONNX)"
            )
        self.metadata = metadata if metadata is not None else _derived_metadata(model, arch, max_batch)
        limit = max_batch or self.metadata.max_batch
        self.input_spec = TensorSpec(
            self.metadata.input_name, "float32", (None, *self.metadata.input_size), max_batch=limit
        )
        self.output_spec = TensorSpec(
            self.metadata.output_name, "float32", (None, self.metadata.num_classes), max_batch=limit
        )
        self.provider = f"PyTorch {torch.__version__} on {self._device}"

    def _build(
        self,
        source: str | os.PathLike[str] | nn.Module,
        arch: str | None,
        metadata: ModelMetadata | None,
        options: dict[str, Any],
        layout: str,
    ) -> nn.Module:
        if isinstance(source, nn.Module):
            return source
        if metadata is not None:
            arch = arch or metadata.arch
            options = options or dict(metadata.options)
        path = Path(source)
        if not path.is_file():
            name = str(source)
            if path.suffix or os.sep in name:
                raise BadInputError(f"weights file {path} does not exist; check the path")
            if not self._random_weights:
                raise ConfigError(
                    f"{name} is an architecture without weights; give its weights file, or pass "
                    "random_weights=True for a model with random weights (speed only, not answers)"
                )
            logger.info("%s: no weights given, so the PyTorch model has random weights", name)
            return _create(name, None, options, layout)[0]
        self.weights_path = path
        self.record = find_training_record(path)
        if self.record is not None and metadata is None:
            arch = arch or self.record.arch
            options = options or dict(self.record.options)
        if arch is None:
            arch = read_checkpoint(path).arch
        if arch is None:
            raise ConfigError(
                f"{path} does not say which architecture it holds; give arch= (or verify --reference with an "
                "artifact whose metadata names it)"
            )
        model, sha256 = _create(arch, path, options, layout)
        if metadata is not None and metadata.weights_sha256 is not None and sha256 is not None:
            self.weights_match = sha256 == metadata.weights_sha256
            if not self.weights_match:
                logger.warning(
                    "%s is not the weights file the artifact was exported from (sha256 %s... != %s...)",
                    path,
                    sha256[:12],
                    metadata.weights_sha256[:12],
                )
        return model

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        model = self._model
        if model is None:
            raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
        tensor = torch.from_numpy(batch if batch.flags.writeable else batch.copy()).to(self._device)
        with torch.inference_mode():
            logits = model(tensor)
        return logits.float().cpu().numpy()

    def _release(self) -> None:
        self._model = None


def _create(
    arch: str, weights: Path | None, options: dict[str, Any], layout: str
) -> tuple[nn.Module, str | None]:
    """A zoo model (``build_model``) or a ``package.module:factory`` model with ``weights`` loaded, and their sha256."""
    if ":" in arch:
        from sedeploy.models.factory import load_model_factory

        model = load_model_factory(arch, **options)
        if weights is None:
            return model, None
        checkpoint = read_checkpoint(weights)
        load_weights(model, checkpoint.state_dict, str(weights))
        return model, checkpoint.sha256
    if arch not in list_models():
        raise ConfigError(
            f"unknown architecture {arch!r}; give a weights file, a package.module:factory, or one of: "
            f"{', '.join(list_models())}"
        )
    model, converted = build_model(arch, weights, layout=layout, **options)
    return model, converted.sha256 if converted is not None else None


def _torch_device(device: str | None) -> torch.device:
    try:
        chosen = torch.device(device or "cpu")
    except RuntimeError:
        raise ConfigError(f"unknown PyTorch device {device!r}; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(
            f"device {device!r} needs CUDA, which this PyTorch cannot use; load with device='cpu'"
        )
    return chosen


def _record_metadata(model: nn.Module, record: TrainingRecord, max_batch: int | None) -> ModelMetadata:
    """Metadata from the checkpoint's training record: its input size, preprocessing and labels."""
    from sedeploy._version import __version__

    complexity = estimate_complexity(model, record.input_size)
    defaults = model_defaults(model)
    return ModelMetadata(
        arch=getattr(model, "model_name", None) or record.arch,
        options=dict(getattr(model, "model_options", record.options)),
        input_size=record.input_size,
        num_classes=defaults.num_classes if defaults is not None else len(record.labels or ()),
        preprocessing=record.preprocessing,
        params=complexity.params,
        macs=complexity.macs,
        opset=0,
        max_batch=max_batch or DEFAULT_MAX_BATCH,
        sedeploy_version=__version__,
        channel_order=channel_order_for(record.in_chans),
        labels=record.labels,
    )


def _derived_metadata(model: nn.Module, arch: str | None, max_batch: int | None) -> ModelMetadata:
    """Metadata as export would write it, from the model's registry defaults (opset 0: not exported)."""
    from sedeploy._version import __version__

    defaults: ModelDefaults | None = model_defaults(model)
    if defaults is None:
        raise ConfigError(
            f"{type(model).__name__} has no sedeploy defaults (input size, preprocessing); "
            "pass metadata= from its exported ONNX (sedeploy.read_metadata)"
        )
    complexity = estimate_complexity(model, defaults.input_size)
    return ModelMetadata(
        arch=getattr(model, "model_name", None) or arch or type(model).__name__,
        options=dict(getattr(model, "model_options", {})),
        input_size=defaults.input_size,
        num_classes=defaults.num_classes,
        preprocessing=Preprocessing.from_defaults(defaults),
        params=complexity.params,
        macs=complexity.macs,
        opset=0,
        max_batch=max_batch or DEFAULT_MAX_BATCH,
        sedeploy_version=__version__,
        channel_order=channel_order_for(defaults.input_size[0]),
        labels=defaults.labels,
    )
