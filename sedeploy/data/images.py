"""Images in: listing folders (flat or ImageFolder), decoding every odd format safely, channel conversion.

See :mod:`sedeploy.data` for the layout and decoding rules.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import FileTooLargeError, NotRegularFileError, open_regular, special_file_reason

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
"""File extensions read as images, compared case-insensitively (GIF: its first frame)."""
DEFAULT_MAX_PIXELS: int = 64_000_000
"""Images with more pixels than this are refused before decoding (a decompression bomb guard)."""
MAX_PIXELS_ENV = "SEDEPLOY_MAX_IMAGE_PIXELS"
"""Environment variable that replaces :data:`DEFAULT_MAX_PIXELS` for every command."""
BYTES_PER_PIXEL_LIMIT = 8
"""An image file may hold at most this many bytes per allowed pixel (16-bit RGBA, uncompressed) ..."""
IMAGE_METADATA_BYTES = 16 << 20
"""... plus this much for what formats carry besides pixels (EXIF, ICC profiles, thumbnails)."""
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
class ImageListing:
    """What a folder walk found: the image files (with labels), class names, other files, and special files.

    ``not_regular``: files with an image name that are pipes, sockets, devices or
    links to them (or to nothing): never opened, skipped, and named once
    (:meth:`not_regular_line`). ``ignored`` counts files that are not images by name
    and hidden entries.
    """

    folder: Path
    entries: list[tuple[Path, int | None]]
    class_names: tuple[str, ...] | None
    ignored: int
    not_regular: tuple[SkippedFile, ...] = ()

    def relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def not_regular_line(self) -> str | None:
        """The one line that names every special file skipped, or None when there is none."""
        return not_regular_line(self.folder, self.not_regular)


def not_regular_line(folder: str | os.PathLike[str], skipped: Sequence[SkippedFile]) -> str | None:
    """``skipped N files that are not regular files: a (what), ...`` for special files met in ``folder``."""
    if not skipped:
        return None
    files = "file that is not a regular file" if len(skipped) == 1 else "files that are not regular files"
    named = ", ".join(f"{skip.path} ({skip.reason.removesuffix(', not a regular file')})" for skip in skipped)
    return f"skipped {len(skipped)} {files} in {folder}: {named}"


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


def _walk_files(folder: Path, top: Path) -> tuple[list[Path], int, list[SkippedFile]]:
    """Image files under ``folder`` (recursive, hidden entries left out), the count of other files, and the
    image-named special files (pipes, sockets, devices, links to them; relative to ``top``)."""
    images: list[Path] = []
    special: list[SkippedFile] = []
    ignored = 0
    for root, dirs, files in os.walk(folder):
        hidden_dirs = [name for name in dirs if _is_hidden(name)]
        dirs[:] = [name for name in dirs if not _is_hidden(name)]
        ignored += len(hidden_dirs)
        for name in files:
            if not _is_hidden(name) and _is_image_name(name):
                path = Path(root) / name
                reason = special_file_reason(path)
                if reason is None:
                    images.append(path)
                else:
                    special.append(
                        SkippedFile(path.relative_to(top).as_posix(), f"{reason}, not a regular file")
                    )
            else:
                ignored += 1
    return images, ignored, special


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        reason = special_file_reason(folder)
        if reason is not None:  # a link to nothing
            raise ImageSetError(f"image folder {folder} is {reason}; give the folder that holds the images")
        raise ImageSetError(f"image folder {folder} does not exist; check the path")
    if not folder.is_dir():
        what = special_file_reason(folder) or "a file"
        raise ImageSetError(f"{folder} is {what}, not a folder; give the folder that holds the images")


def scan_images(folder: str | os.PathLike[str]) -> ImageListing:
    """Walk an image folder (flat or ImageFolder, see the module docstring) without opening any file.

    Image-named files that are not regular files (after following links) are left
    out and listed in ``not_regular``; the caller names them in one line.
    """
    folder = Path(folder)
    _check_folder(folder)
    try:
        top = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise ImageSetError(f"cannot read image folder {folder} ({error.strerror or error})") from None
    top_images = [e for e in top if not _is_hidden(e.name) and e.is_file() and _is_image_name(e.name)]
    class_dirs = [e.name for e in top if not _is_hidden(e.name) and e.is_dir()]
    if top_images or not class_dirs:
        paths, ignored, special = _walk_files(folder, folder)
        paths.sort(key=lambda path: path.relative_to(folder).as_posix())
        return ImageListing(folder, [(path, None) for path in paths], None, ignored, _sorted(special))
    special = []
    ignored = 0
    for entry in top:
        if _is_hidden(entry.name) or not entry.is_dir():
            reason = None if _is_hidden(entry.name) else special_file_reason(entry.path)
            if reason is not None and _is_image_name(entry.name):
                special.append(SkippedFile(entry.name, f"{reason}, not a regular file"))
            else:
                ignored += 1
    entries: list[tuple[Path, int | None]] = []
    for label, name in enumerate(class_dirs):
        paths, class_ignored, class_special = _walk_files(folder / name, folder)
        ignored += class_ignored
        special.extend(class_special)
        entries.extend((path, label) for path in paths)
    entries.sort(key=lambda entry: entry[0].relative_to(folder).as_posix())
    return ImageListing(folder, entries, tuple(class_dirs), ignored, _sorted(special))


def _sorted(skipped: list[SkippedFile]) -> tuple[SkippedFile, ...]:
    return tuple(sorted(skipped, key=lambda skip: skip.path))


def list_images(
    folder: str | os.PathLike[str],
) -> tuple[list[tuple[Path, int | None]], tuple[str, ...] | None]:
    """The image files of a folder with their class labels, sorted by relative path, and the class names.

    Flat folder: labels and class names are ``None``. ImageFolder layout: each
    label indexes the sorted class-folder names. See the module docstring.
    Special files are left out (:func:`scan_images` names them).
    """
    listing = scan_images(folder)
    return listing.entries, listing.class_names


def listed_images_among(
    folder: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str] | None]
) -> list[Path]:
    """Those of ``paths`` that are images of ``folder`` by the listing rules (inside it, not hidden, an image
    name, an existing regular file): an output path among them would overwrite an input image.

    Cheap (no walk): for :func:`sedeploy.files.refuse_output_over_input` on commands that read a folder.
    """
    root = Path(os.path.realpath(folder))
    found = []
    for path in paths:
        if path is None or special_file_reason(path) is not None or not os.path.isfile(path):
            continue
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(root) or resolved == root:
            continue
        parts = resolved.relative_to(root).parts
        if _is_image_name(parts[-1]) and not any(_is_hidden(part) for part in parts):
            found.append(Path(path))
    return found


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


def image_bytes_limit(max_pixels: int | None = None) -> int:
    """The most bytes an image file may hold under the pixel limit in force (checked before it is read).

    :data:`BYTES_PER_PIXEL_LIMIT` per allowed pixel plus :data:`IMAGE_METADATA_BYTES`:
    a file larger than that holds something besides a picture of allowed size.
    """
    return max_pixels_limit(max_pixels) * BYTES_PER_PIXEL_LIMIT + IMAGE_METADATA_BYTES


def open_image_file(path: str | os.PathLike[str], max_pixels: int | None = None) -> BinaryIO:
    """Open an image file for reading: a regular file (links followed) no larger than :func:`image_bytes_limit`.

    A pipe, socket or device (or a link to one), a file that is missing or
    unreadable, or one too large is an :class:`UnreadableImageError` naming it; nothing
    blocks.
    """
    try:
        return open_regular(path, "image", image_bytes_limit(max_pixels))
    except (NotRegularFileError, FileTooLargeError) as error:
        raise UnreadableImageError(path, error.reason, "replace or remove the file") from None
    except OSError as error:
        raise UnreadableImageError(
            path, f"cannot be read ({error.strerror or error})", "check the path and the file's permissions"
        ) from None


def load_image(
    path: str | os.PathLike[str] | BinaryIO, channels: int, max_pixels: int | None = None
) -> Image.Image:
    """Decode one image (a path, or an open binary file such as ``io.BytesIO``) as ``L`` or ``RGB``, upright.

    ``channels`` 1 gives ``L``, 3 gives ``RGB``. A path is opened by
    :func:`open_image_file` (regular files only, never blocking).

    Raises :class:`ImageTooLargeError` when the header declares more than
    ``max_pixels`` pixels (nothing is decoded then) and :class:`UnreadableImageError`
    for anything else that stops the file from becoming an image.
    """
    _check_channels(channels)
    max_pixels = max_pixels_limit(max_pixels)
    if isinstance(path, (str, os.PathLike)):
        with open_image_file(path, max_pixels) as source:
            return _load_image(source, path, channels, max_pixels)
    return _load_image(path, "image bytes", channels, max_pixels)


def _load_image(
    source: BinaryIO, name: str | os.PathLike[str], channels: int, max_pixels: int
) -> Image.Image:
    try:
        # max_pixels is the policy: Pillow's own size warning would only print two stray lines. Opening reads
        # just the header; the lock keeps concurrent loads from racing on the process's warning filters.
        with _open_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(source)
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
