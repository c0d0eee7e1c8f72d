"""Preprocessing: timm's eval transform (resize, center crop, normalise) as torchvision runs it on PIL images."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import onnx
from PIL import Image

from sedeploy.artifacts.metadata import ModelMetadata, Preprocessing, load_onnx, metadata_or_none
from sedeploy.data.images import _MODE_CHANNELS, _check_channels
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.models.defaults import ModelDefaults

logger = logging.getLogger(__name__)

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
"""Interpolation names as timm writes them, and the Pillow filter each one means."""
_FALLBACK_DEFAULTS = ModelDefaults()


class MissingPreprocessingError(ConfigError):
    """The model carries no sedeploy metadata and the preprocessing flags that replace it were not given."""


def _resample_filter(interpolation: str) -> Image.Resampling:
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ConfigError(
            f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}"
        ) from None


def _channel_stats(preprocessing: Preprocessing, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std as float32 arrays of ``channels`` values (a single value applies to every channel)."""
    stats = []
    for name, values in (("mean", preprocessing.mean), ("std", preprocessing.std)):
        if len(values) not in (1, channels):
            raise ConfigError(
                f"preprocessing {name} has {len(values)} values but the images have {channels} channel(s); "
                f"give {channels} value(s) (or one for all channels)"
            )
        stats.append(np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)))
    if not np.all(stats[1] > 0):
        raise ConfigError(f"preprocessing std must be positive, got {tuple(preprocessing.std)}")
    return stats[0], stats[1]


def _check_preprocessing(preprocessing: Preprocessing, channels: int) -> None:
    """Fail early, with one clear line, on a preprocessing that :func:`preprocess` cannot apply."""
    if len(preprocessing.resize) not in (1, 2) or min(preprocessing.resize) < 1:
        raise ConfigError(f"resize must be one or two positive sizes, got {tuple(preprocessing.resize)}")
    if len(preprocessing.crop) != 2 or min(preprocessing.crop) < 1:
        raise ConfigError(f"crop must be two positive sizes (H, W), got {tuple(preprocessing.crop)}")
    _resample_filter(preprocessing.interpolation)
    _channel_stats(preprocessing, channels)


def _resized_size(width: int, height: int, resize: tuple[int, ...]) -> tuple[int, int]:
    """The (W, H) torchvision's ``Resize(resize)`` gives an image of ``width`` x ``height``."""
    if len(resize) == 2:
        return resize[1], resize[0]
    size = resize[0]
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _center_crop(pixels: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """torchvision's ``center_crop`` on an (H, W, C) array: zero padding first when the crop is larger."""
    crop_height, crop_width = crop
    height, width = pixels.shape[:2]
    if crop_height > height or crop_width > width:
        pad_height, pad_width = max(crop_height - height, 0), max(crop_width - width, 0)
        pixels = np.pad(
            pixels,
            ((pad_height // 2, (pad_height + 1) // 2), (pad_width // 2, (pad_width + 1) // 2), (0, 0)),
        )
        height, width = pixels.shape[:2]
    top = round((height - crop_height) / 2.0)
    left = round((width - crop_width) / 2.0)
    return pixels[top : top + crop_height, left : left + crop_width]


def preprocess(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """One ``L`` or ``RGB`` image to the model's input: float32 ``(C, H, W)``, resized, cropped, normalised."""
    channels = _MODE_CHANNELS.get(image.mode)
    if channels is None:
        raise BadInputError(
            f"preprocess takes an 'L' or 'RGB' image, not mode {image.mode!r}; use load_image"
        )
    mean, std = _channel_stats(preprocessing, channels)
    size = _resized_size(image.width, image.height, tuple(preprocessing.resize))
    if size != image.size:
        image = image.resize(size, _resample_filter(preprocessing.interpolation))
    pixels = np.asarray(image, dtype=np.float32).reshape(image.height, image.width, channels)
    pixels = _center_crop(pixels, preprocessing.crop)
    normalised = (pixels / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def _size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    values = (size, size) if isinstance(size, int) else tuple(int(value) for value in size)
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or min(values) < 1:
        raise ConfigError(f"{name} must be one or two positive sizes, got {size!r}")
    return values[0], values[1]


def _metadata_of(
    source: str | os.PathLike[str] | onnx.ModelProto | ModelMetadata | None,
) -> tuple[ModelMetadata | None, str]:
    """The model's sedeploy metadata, or ``None`` when it has none, and how to name the model in errors."""
    if source is None:
        return None, "no model"
    if isinstance(source, ModelMetadata):
        return source, "the model"
    if isinstance(source, onnx.ModelProto):
        return metadata_or_none(source), "the model"
    return metadata_or_none(load_onnx(source)), str(source)


def preprocessing_for(
    source: str | os.PathLike[str] | onnx.ModelProto | ModelMetadata | None,
    *,
    img_size: int | Sequence[int] | None = None,
    resize: int | Sequence[int] | None = None,
    crop_pct: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
    interpolation: str | None = None,
) -> tuple[Preprocessing, int]:
    """The preprocessing and channel count for a model: its sedeploy metadata, with explicit values winning.

    ``source`` is an ONNX path or model, a :class:`ModelMetadata`, or ``None``.
    Without metadata, ``img_size``, ``mean`` and ``std`` are required (one clear
    error names the missing flags); channels default to the number of mean
    values, ``crop_pct`` and ``interpolation`` to timm's defaults (0.875,
    bilinear). When ``img_size`` or ``crop_pct`` changes and ``resize`` is not
    given, the resize is derived as export does: ``floor(size / crop_pct)``.
    A single mean/std value is repeated for every channel.
    """
    metadata, model_name = _metadata_of(source)
    if metadata is not None:
        base, base_channels = metadata.preprocessing, metadata.in_chans
    elif img_size is not None and mean is not None and std is not None:
        base = Preprocessing(
            resize=(),
            crop=_size_pair(img_size, "img_size"),
            crop_pct=_FALLBACK_DEFAULTS.crop_pct,
            mean=tuple(float(value) for value in mean),
            std=tuple(float(value) for value in std),
            interpolation=_FALLBACK_DEFAULTS.interpolation,
        )
        base_channels = len(base.mean)
    else:
        missing = [
            flag for flag, value in (("img_size", img_size), ("mean", mean), ("std", std)) if value is None
        ]
        raise MissingPreprocessingError(
            f"{model_name} has no sedeploy metadata, so the preprocessing must be given: add "
            f"{', '.join(missing)} (and channels when it differs from the number of mean values)",
            params=("mean", "std", "channels"),
        )

    crop = _size_pair(img_size, "img_size") if img_size is not None else base.crop
    pct = crop_pct if crop_pct is not None else base.crop_pct
    if not 0 < pct <= 1:
        raise ConfigError(f"crop_pct must be in (0, 1], got {pct}")
    if resize is not None:
        resize_sizes: tuple[int, ...] = (
            (resize,) if isinstance(resize, int) else tuple(int(v) for v in resize)
        )
    elif base.resize and img_size is None and crop_pct is None:
        resize_sizes = tuple(base.resize)
    elif crop[0] == crop[1]:
        resize_sizes = (math.floor(crop[0] / pct),)
    else:
        resize_sizes = (math.floor(crop[0] / pct), math.floor(crop[1] / pct))

    channels = channels if channels is not None else base_channels
    _check_channels(channels)
    stats = {
        "mean": tuple(float(v) for v in mean) if mean is not None else tuple(base.mean),
        "std": tuple(float(v) for v in std) if std is not None else tuple(base.std),
    }
    for name, values in stats.items():
        if len(values) == 1:
            stats[name] = values * channels
        elif len(values) != channels:
            raise ConfigError(
                f"{model_name}: {name} has {len(values)} values but the model takes {channels} channel(s); "
                f"give mean and std with {channels} value(s) each",
                params=("mean", "std"),
            )
    preprocessing = Preprocessing(
        resize=resize_sizes,
        crop=crop,
        crop_pct=pct,
        mean=stats["mean"],
        std=stats["std"],
        interpolation=interpolation or base.interpolation,
    )
    _check_preprocessing(preprocessing, channels)
    return preprocessing, channels
