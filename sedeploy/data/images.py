"""Images in: listing folders (flat or ImageFolder), decoding every odd format safely, channel conversion.

See :mod:`sedeploy.data` for the layout and decoding rules.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from sedeploy.errors import BadInputError, ConfigError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
"""File extensions read as images, compared case-insensitively (GIF: its first frame)."""
DEFAULT_MAX_PIXELS: int = 64_000_000
"""Images with more pixels than this are refused before decoding (a decompression bomb guard)."""
MAX_PIXELS_ENV = "SEDEPLOY_MAX_IMAGE_PIXELS"
"""Environment variable that replaces :data:`DEFAULT_MAX_PIXELS` for every command."""
SUPPORTED_CHANNELS = (1, 3)
_MODE_CHANNELS = {"L": 1, "RGB": 3}
_HIGH_BIT_DEPTH_DIVISORS = {
    "I;16": 257.0,
    "I;16L": 257.0,
    "I;16B": 257.0,
    "I;16N": 257.0,
    "I": 257.0,
    "F": 1.0,
}
_decode_lock = threading.Lock()
_open_lock = threading.Lock()
_decode_count = 0


class ImageSetError(BadInputError):
    """An image folder cannot be used as a whole: missing, not a folder, empty, or no image in it decodes."""


class BadImageError(BadInputError):
    """One image file cannot be used; ``reason`` says why without the path (it goes into the report)."""

    def __init__(self, path: str | os.PathLike[str], reason: str, fix: str) -> None:
        super().__init__(f"{path}: {reason}; {fix}")
        self.path = str(path)
        self.reason = reason


class UnreadableImageError(BadImageError):
    """The file is missing, unreadable, not an image, truncated or corrupt, or in a mode that cannot be converted."""


class ImageTooLargeError(BadImageError):
    """The image's header declares more pixels than allowed; refused before decoding."""


@dataclass(frozen=True)
class SkippedFile:
    """An image file left out of a set: its path relative to the folder, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class _Listing:
    folder: Path
    entries: list[tuple[Path, int | None]]
    class_names: tuple[str, ...] | None
    ignored: int

    def relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()


def images_decoded() -> int:
    """How many image decodes this process has started; tests use it to show that a cache hit decodes nothing."""
    return _decode_count


def _count_decode() -> None:
    global _decode_count
    with _decode_lock:
        _decode_count += 1


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_files(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, hidden entries left out) and the count of other files."""
    images: list[Path] = []
    ignored = 0
    for root, dirs, files in os.walk(folder):
        hidden_dirs = [name for name in dirs if _is_hidden(name)]
        dirs[:] = [name for name in dirs if not _is_hidden(name)]
        ignored += len(hidden_dirs)
        for name in files:
            if not _is_hidden(name) and _is_image_name(name):
                images.append(Path(root) / name)
            else:
                ignored += 1
    return images, ignored


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise ImageSetError(f"image folder {folder} does not exist; check the path")
    if not folder.is_dir():
        raise ImageSetError(f"{folder} is a file, not a folder; give the folder that holds the images")


def _scan(folder: str | os.PathLike[str]) -> _Listing:
    folder = Path(folder)
    _check_folder(folder)
    try:
        top = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise ImageSetError(f"cannot read image folder {folder} ({error.strerror or error})") from None
    top_images = [e for e in top if not _is_hidden(e.name) and e.is_file() and _is_image_name(e.name)]
    class_dirs = [e.name for e in top if not _is_hidden(e.name) and e.is_dir()]
    if top_images or not class_dirs:
        paths, ignored = _walk_files(folder)
        paths.sort(key=lambda path: path.relative_to(folder).as_posix())
        return _Listing(folder, [(path, None) for path in paths], None, ignored)
    ignored = sum(1 for e in top if _is_hidden(e.name) or not e.is_dir())
    entries: list[tuple[Path, int | None]] = []
    for label, name in enumerate(class_dirs):
        paths, class_ignored = _walk_files(folder / name)
        ignored += class_ignored
        entries.extend((path, label) for path in paths)
    entries.sort(key=lambda entry: entry[0].relative_to(folder).as_posix())
    return _Listing(folder, entries, tuple(class_dirs), ignored)


def list_images(
    folder: str | os.PathLike[str],
) -> tuple[list[tuple[Path, int | None]], tuple[str, ...] | None]:
    """The image files of a folder with their class labels, sorted by relative path, and the class names.

    Flat folder: labels and class names are ``None``. ImageFolder layout: each
    label indexes the sorted class-folder names. See the module docstring.
    """
    listing = _scan(folder)
    return listing.entries, listing.class_names


def _check_channels(channels: int) -> None:
    if channels not in SUPPORTED_CHANNELS:
        raise ConfigError(
            f"images can be converted to 1 (grayscale) or 3 (RGB) channels, not {channels}; "
            "use a model with 1 or 3 input channels"
        )


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite an image with transparency onto black (see the module docstring for why black)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _has_alpha(image: Image.Image) -> bool:
    bands = image.getbands()
    return "A" in bands or "a" in bands or "transparency" in image.info


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to ``L`` (1 channel) or ``RGB`` (3 channels), as the module docstring lists."""
    divisor = _HIGH_BIT_DEPTH_DIVISORS.get(image.mode)
    if divisor is not None:
        pixels = np.asarray(image, dtype=np.float64) / divisor
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    elif _has_alpha(image):
        image = _flatten_alpha(image)
    target = "L" if channels == 1 else "RGB"
    if image.mode == target:
        return image
    if image.mode not in _MODE_CHANNELS:
        image = image.convert("RGB")
    return image.convert(target)


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$SEDEPLOY_MAX_IMAGE_PIXELS``, else the default."""
    if max_pixels is not None:
        value, source = max_pixels, "max_pixels"
    else:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = 0
        source = f"{MAX_PIXELS_ENV}={text!r}"
    if value < 1:
        raise ConfigError(f"{source} is not a positive whole number of pixels; use e.g. {DEFAULT_MAX_PIXELS}")
    return value


def load_image(
    path: str | os.PathLike[str] | BinaryIO, channels: int, max_pixels: int | None = None
) -> Image.Image:
    """Decode one image (a path, or an open binary file such as ``io.BytesIO``) as ``L`` or ``RGB``, upright.

    ``channels`` 1 gives ``L``, 3 gives ``RGB``.

    Raises :class:`ImageTooLargeError` when the header declares more than
    ``max_pixels`` pixels (nothing is decoded then) and :class:`UnreadableImageError`
    for anything else that stops the file from becoming an image.
    """
    _check_channels(channels)
    name = path if isinstance(path, (str, os.PathLike)) else "image bytes"
    max_pixels = max_pixels_limit(max_pixels)
    try:
        # max_pixels is the policy: Pillow's own size warning would only print two stray lines. Opening reads
        # just the header; the lock keeps concurrent loads from racing on the process's warning filters.
        with _open_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(name, f"too large ({error})", "shrink the image") from None
    except Exception as error:
        raise UnreadableImageError(
            name, f"not a readable image ({type(error).__name__}: {error})", "replace or remove the file"
        ) from None
    with handle:
        width, height = handle.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                name,
                f"too large ({width}x{height} = {width * height} pixels, more than max_pixels={max_pixels})",
                f"shrink the image or raise the pixel limit ({MAX_PIXELS_ENV})",
            )
        try:
            _count_decode()
            handle.seek(0)
            handle.load()
            upright = ImageOps.exif_transpose(handle)
            return to_channels(upright, channels)
        except Exception as error:
            raise UnreadableImageError(
                name,
                f"corrupt, truncated or unsupported image ({type(error).__name__}: {error})",
                "replace or remove the file",
            ) from None
