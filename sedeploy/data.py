"""Image sets: a folder of images in, preprocessed float32 tensors out, for calibration now and evaluation later.

Layout
    A folder is read in one of two layouts. When image files sit directly in it,
    it is *flat*: every image under it (sub-folders included) is used and there
    are no labels. When it holds only sub-folders, it is torchvision's
    *ImageFolder* layout: each sub-folder is a class, class names are the sorted
    folder names (empty class folders included, so label numbers match
    torchvision's), and images are found recursively inside each class folder.
    Hidden files and folders (names starting with ``.``) are ignored, as are files
    whose extension is not in :data:`IMAGE_EXTENSIONS` (a README or a labels file
    beside the images is normal); those are counted in the report as ``ignored``.
    Files with an image extension that cannot be decoded are *skipped*: logged as
    a warning and listed in the report.

Decoding (:func:`load_image`)
    The pixel count is read from the header and checked against ``max_pixels``
    before any pixel is decoded (default: the ``SEDEPLOY_MAX_IMAGE_PIXELS``
    environment variable, else :data:`DEFAULT_MAX_PIXELS`; Pillow itself refuses
    more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` whatever the limit). The first
    frame of an animated image is used and the EXIF orientation applied. Every
    mode is converted to ``L`` (1 channel) or ``RGB`` (3 channels): palette and
    CMYK through Pillow's conversions (no ICC colour management); 16-bit grayscale scaled to 8 bits (value / 257; Pillow's
    own conversion would clip at 255); 32-bit float pixels clipped to 0-255;
    images with transparency (RGBA, LA, PA, palette or RGB with a transparent
    colour) composited on **black**. Black is chosen because encoders store fully
    transparent pixels as (0, 0, 0, 0) in the common case, so the result equals
    the ``convert("RGB")`` of torchvision's ImageFolder loader, i.e. what a model
    trained that way saw; it is also the value center-crop padding uses. Colour
    images for a 1-channel model are converted with ITU-R 601-2 luma, grayscale
    images for a 3-channel model are replicated; neither is rejected.

Preprocessing (:func:`preprocess`)
    timm's eval transform as torchvision runs it on PIL images: resize the short
    side (one value; the long side is truncated as torchvision does) or to exactly
    (H, W) (two values), center crop (zero padding when the crop is larger), scale
    to [0, 1], normalise with mean and std, in float32, channels first.

Sampling and cache (:func:`load_image_set`)
    ``limit`` images are chosen by ranking every image's relative path by
    ``sha256(f"{seed}:{path}")`` and taking the lowest; they are then used in path
    order. The choice depends only on the seed and the file names, not on Python's
    or numpy's random generators, and adding one file to the folder changes the
    sample by at most one image. Sampled files that cannot be decoded are skipped,
    not replaced, so ``used`` can be below ``limit``.
    With ``cache_dir``, the preprocessed array is stored as
    ``images-<key>.npz``; the key is a SHA-256 over the sampled files' relative
    paths and contents, the class names, the preprocessing, the channels, limit,
    seed, ``max_pixels`` and Pillow's version. Files are hashed on every call (that
    is what makes a changed image invalidate the cache); on a hit nothing is
    decoded. Old entries are not removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import onnx
import PIL
from PIL import Image, ImageOps
from tqdm import tqdm

from sedeploy.artifacts.metadata import ModelMetadata, Preprocessing, load_onnx, metadata_or_none
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import atomic_output, sha256_of_file
from sedeploy.models.registry import ModelDefaults

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
"""File extensions read as images, compared case-insensitively (GIF: its first frame)."""
DEFAULT_MAX_PIXELS: int = 64_000_000
"""Images with more pixels than this are refused before decoding (a decompression bomb guard)."""
MAX_PIXELS_ENV = "SEDEPLOY_MAX_IMAGE_PIXELS"
"""Environment variable that replaces :data:`DEFAULT_MAX_PIXELS` for every command."""
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
"""Interpolation names as timm writes them, and the Pillow filter each one means."""
SUPPORTED_CHANNELS = (1, 3)
CACHE_FORMAT_VERSION = 1

_MODE_CHANNELS = {"L": 1, "RGB": 3}
_HIGH_BIT_DEPTH_DIVISORS = {
    "I;16": 257.0,
    "I;16L": 257.0,
    "I;16B": 257.0,
    "I;16N": 257.0,
    "I": 257.0,
    "F": 1.0,
}
_FALLBACK_DEFAULTS = ModelDefaults()

_decode_lock = threading.Lock()
_open_lock = threading.Lock()
_decode_count = 0

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


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


class MissingPreprocessingError(ConfigError):
    """The model carries no sedeploy metadata and the preprocessing flags that replace it were not given."""


@dataclass(frozen=True)
class SkippedFile:
    """An image file left out of a set: its path relative to the folder, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ImageSetReport:
    """What was read from an image folder; goes into build manifests.

    ``found``: image files in the folder; ``sampled``: how many of them ``limit``
    selected; ``used``: how many decoded (``used + len(skipped) == sampled``);
    ``ignored``: files that are not images by extension, and hidden files and folders
    (a hidden folder counts once). ``skipped`` paths are relative to ``folder``.
    ``dataset_sha256``: SHA-256 over the sorted lines ``"<relative path>\\0<file sha256>\\n"``
    of the files used.
    """

    folder: str
    found: int
    used: int
    skipped: tuple[SkippedFile, ...]
    dataset_sha256: str
    class_names: tuple[str, ...] | None
    sampled: int
    ignored: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: skipped files as ``{"path", "reason"}`` objects, tuples as lists."""
        data = dataclasses.asdict(self)
        data["skipped"] = [dataclasses.asdict(skipped) for skipped in self.skipped]
        data["class_names"] = list(self.class_names) if self.class_names is not None else None
        return data


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed images ``(N, C, H, W)`` float32, their class labels (ImageFolder layout only), and the report.

    ``files`` are the images' paths relative to the folder, one per row of ``images``.
    """

    images: np.ndarray
    labels: np.ndarray | None
    report: ImageSetReport
    cache_hit: bool
    files: tuple[str, ...]


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


def _sample(listing: _Listing, limit: int | None, seed: int) -> list[tuple[Path, int | None]]:
    """``limit`` entries ranked by ``sha256(f"{seed}:{relative path}")``, returned in path order."""
    if limit is None or limit >= len(listing.entries):
        return list(listing.entries)

    def rank(index: int) -> str:
        name = listing.relative(listing.entries[index][0])
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()

    chosen = sorted(range(len(listing.entries)), key=rank)[:limit]
    return [listing.entries[index] for index in sorted(chosen)]


def dataset_sha256(file_hashes: Sequence[tuple[str, str]]) -> str:
    """SHA-256 over sorted ``(relative path, file sha256)`` pairs, as ``"<path>\\0<sha256>\\n"`` lines."""
    digest = hashlib.sha256()
    for name, file_hash in sorted(file_hashes):
        digest.update(f"{name}\0{file_hash}\n".encode())
    return digest.hexdigest()


def _hash_file(path: Path) -> str | BadImageError:
    try:
        return sha256_of_file(path)
    except OSError as error:
        return UnreadableImageError(
            path, f"cannot be read ({error.strerror or error})", "check the file's permissions"
        )


def _run_pool(
    work: Callable[[_Item], _Result], items: Sequence[_Item], workers: int, bar: tqdm | None = None
) -> list[_Result]:
    """``work`` over ``items`` in a thread pool, results in item order; advances ``bar`` as items finish."""
    results: list[_Result] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sedeploy-images") as pool:
        for result in pool.map(work, items):
            results.append(result)
            if bar is not None:
                bar.update(1)
    return results


def _cache_key(
    file_hashes: Sequence[tuple[str, str]],
    class_names: tuple[str, ...] | None,
    preprocessing: Preprocessing,
    channels: int,
    limit: int | None,
    seed: int,
    max_pixels: int,
) -> str:
    fields = {
        "format": CACHE_FORMAT_VERSION,
        "files": dataset_sha256(file_hashes),
        "class_names": class_names,
        "preprocessing": dataclasses.asdict(preprocessing),
        "channels": channels,
        "limit": limit,
        "seed": seed,
        "max_pixels": max_pixels,
        "pillow": PIL.__version__,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]] | None:
    """The cached images, labels and report fields, or ``None`` when absent or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            fields = json.loads(str(archive["report"]))
            labels = archive["labels"] if fields["labeled"] else None
        return images, labels, fields
    except Exception as error:
        logger.warning("ignoring unreadable image cache %s (%s); rebuilding it", path, error)
        return None


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray | None, fields: dict[str, Any]) -> None:
    """Store the set atomically; a cache that cannot be written is a warning, not a failure."""
    stored_labels = labels if labels is not None else np.empty(0, dtype=np.int64)
    report = np.array(json.dumps({**fields, "labeled": labels is not None}))
    try:
        with atomic_output(path) as temp_path, open(temp_path, "wb") as handle:
            np.savez(handle, images=images, labels=stored_labels, report=report)
    except (OSError, BadInputError) as error:
        logger.warning("could not write image cache %s (%s); continuing without it", path, error)


def _default_workers() -> int:
    return max(1, min(32, os.cpu_count() or 1))


def load_image_set(
    folder: str | os.PathLike[str],
    preprocessing: Preprocessing,
    channels: int,
    *,
    limit: int | None = None,
    seed: int = 0,
    max_pixels: int | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> CalibrationSet:
    """Decode and preprocess a folder's images (``limit`` of them, sampled with ``seed``) into one array.

    Files that cannot be decoded are skipped with a warning and listed in the
    report; a folder that is missing, not a folder, empty, or has no usable image
    raises :class:`ImageSetError`. See the module docstring for sampling and cache.
    """
    _check_channels(channels)
    _check_preprocessing(preprocessing, channels)
    max_pixels = max_pixels_limit(max_pixels)
    if limit is not None and limit < 1:
        raise ConfigError(f"the number of images must be at least 1, got {limit}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    workers = workers or _default_workers()

    listing = _scan(folder)
    if not listing.entries:
        raise ImageSetError(
            f"image folder {listing.folder} holds no images ({listing.ignored} other files or hidden entries); "
            f"add {', '.join(IMAGE_EXTENSIONS)} files"
        )
    sampled = _sample(listing, limit, seed)
    names = [listing.relative(path) for path, _ in sampled]
    hashes = _run_pool(_hash_file, [path for path, _ in sampled], workers)
    skipped: dict[str, SkippedFile] = {}
    readable = []
    for name, entry, file_hash in zip(names, sampled, hashes, strict=True):
        if isinstance(file_hash, BadImageError):
            skipped[name] = SkippedFile(name, file_hash.reason)
        else:
            readable.append((name, entry, file_hash))

    cache_path = None
    if cache_dir is not None:
        unreadable = [(name, "unreadable") for name in skipped]
        key = _cache_key(
            [(name, file_hash) for name, _, file_hash in readable] + unreadable,
            listing.class_names,
            preprocessing,
            channels,
            limit,
            seed,
            max_pixels,
        )
        cache_path = Path(cache_dir) / f"images-{key}.npz"
        cached = _read_cache(cache_path)
        if cached is not None:
            images, labels, fields = cached
            logger.info("image set of %s read from cache %s", listing.folder, cache_path)
            report = _report(
                listing,
                len(sampled),
                fields["used"],
                [SkippedFile(**skip) for skip in fields["skipped"]],
                fields["dataset_sha256"],
            )
            return CalibrationSet(images, labels, report, cache_hit=True, files=tuple(fields["files"]))

    crop_height, crop_width = preprocessing.crop
    images = np.empty((len(readable), channels, crop_height, crop_width), dtype=np.float32)

    def decode(index: int) -> BadImageError | None:
        path = readable[index][1][0]
        try:
            images[index] = preprocess(load_image(path, channels, max_pixels), preprocessing)
        except BadImageError as error:
            return error
        return None

    with tqdm(
        total=len(readable), desc="images", unit="img", file=sys.stderr, disable=not progress, leave=False
    ) as bar:
        failures = _run_pool(decode, range(len(readable)), workers, bar)

    kept = []
    for index, ((name, _, _), failure) in enumerate(zip(readable, failures, strict=True)):
        if failure is None:
            kept.append(index)
        else:
            skipped[name] = SkippedFile(name, failure.reason)
    skipped_files = [skipped[name] for name in sorted(skipped)]
    for skip in skipped_files:
        logger.warning("skipping image %s: %s", listing.folder / skip.path, skip.reason)
    if not kept:
        first = skipped_files[0]
        raise ImageSetError(
            f"no usable images in {listing.folder}: all {len(sampled)} image file(s) tried "
            f"(of {len(listing.entries)} found) were skipped "
            f"(first: {first.path}: {first.reason}); add readable images"
        )

    images = images[kept] if len(kept) < len(readable) else images
    labels = None
    if listing.class_names is not None:
        labels = np.array([readable[index][1][1] for index in kept], dtype=np.int64)
    files = tuple(readable[index][0] for index in kept)
    used_hash = dataset_sha256([(readable[index][0], readable[index][2]) for index in kept])
    report = _report(listing, len(sampled), len(kept), skipped_files, used_hash)
    if cache_path is not None:
        fields = {
            "used": report.used,
            "skipped": [dataclasses.asdict(skip) for skip in report.skipped],
            "dataset_sha256": report.dataset_sha256,
            "files": list(files),
        }
        _write_cache(cache_path, images, labels, fields)
    return CalibrationSet(images, labels, report, cache_hit=False, files=files)


def _report(
    listing: _Listing, sampled: int, used: int, skipped: Sequence[SkippedFile], used_hash: str
) -> ImageSetReport:
    return ImageSetReport(
        folder=str(listing.folder),
        found=len(listing.entries),
        used=used,
        skipped=tuple(skipped),
        dataset_sha256=used_hash,
        class_names=listing.class_names,
        sampled=sampled,
        ignored=listing.ignored,
    )


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
            flag
            for flag, value in (("--img-size", img_size), ("--mean", mean), ("--std", std))
            if value is None
        ]
        raise MissingPreprocessingError(
            f"{model_name} has no sedeploy metadata, so the preprocessing must be given: add "
            f"{', '.join(missing)} (and --in-chans when it differs from the number of --mean values)"
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
                f"give --mean and --std with {channels} value(s) each"
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
