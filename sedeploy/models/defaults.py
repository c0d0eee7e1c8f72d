"""Each model's input size and preprocessing defaults (:class:`ModelDefaults`) and export's defaults, without PyTorch.

The runtime path (preprocessing in ``data/``, ``info`` on an ONNX) reads these defaults and must not load
PyTorch; the registry (``models/registry.py``) re-exports them beside the constructors. The command line shows
export's defaults in ``--help`` without PyTorch too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DEFAULT_OPSET = 18
"""The ONNX opset export writes (see :mod:`sedeploy.export` for why 18)."""
DEFAULT_MAX_BATCH = 32
"""Largest batch an exported model plans for (``sedeploy.max_batch``), and one PyTorch forward pass takes when no
metadata says otherwise."""
LAYOUTS = ("auto", "sedeploy", "timm", "legacy")
"""State-dict layouts a checkpoint may come in (:func:`sedeploy.models.checkpoint.load_weights`)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelDefaults:
    """Input size and preprocessing a model expects; export carries it into the ONNX file.

    ``mean``/``std`` are per input channel on pixels scaled to [0, 1]; images are
    resized so the short side is ``input_size / crop_pct`` and center-cropped to
    ``input_size``.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    labels: tuple[str, ...] | None = None
    plain_twin: str | None = None
    plain_twin_options: tuple[tuple[str, Any], ...] = ()
    """Options that make ``plain_twin`` the same network without SE (timm's ``resnet50`` is sedeploy's
    ``resnet50`` with ``stride_placement="v1.5"``); the SE model's own non-SE options are added to them."""

    def for_options(self, in_chans: int, num_classes: int, img_size: tuple[int, int] | None) -> ModelDefaults:
        """Return these defaults adapted to a channel count, class count and input size."""
        mean, std = self.mean, self.std
        if in_chans != len(mean):
            # Grayscale (or other) inputs: one mean/std shared by all channels.
            mean = (round(sum(mean) / len(mean), 4),) * in_chans
            std = (round(sum(std) / len(std), 4),) * in_chans
        height, width = img_size if img_size is not None else self.input_size[1:]
        labels = self.labels if self.labels is not None and len(self.labels) == num_classes else None
        return dataclasses.replace(
            self,
            input_size=(in_chans, height, width),
            num_classes=num_classes,
            mean=mean,
            std=std,
            labels=labels,
        )
