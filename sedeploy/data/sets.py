"""Image sets: a sampled, decoded, preprocessed folder as one array (calibration, training, evaluation), cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import PIL

from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.data.cache import mark_used, trim_cache
from sedeploy.data.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    ImageListing,
    ImageSetError,
    SkippedFile,
    UnreadableImageError,
    _check_channels,
    load_image,
    max_pixels_limit,
    open_image_file,
    scan_images,
)
from sedeploy.data.transforms import _check_preprocessing, preprocess
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import atomic_output, open_regular, sha256_of_handle
from sedeploy.host import usable_cores
from sedeploy.progress import progress_bar

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class ImageSetReport:
    """What was read from an image folder; goes into build manifests.

    ``found``: image files in the folder; ``sampled``: how many of them ``limit``
    selected; ``used``: how many decoded (``used + len(skipped) == sampled``);
    ``ignored``: files that are not images by extension, and hidden files and folders
    (a hidden folder counts once). ``skipped`` paths are relative to ``folder``.
    ``not_regular``: image-named pipes, sockets, devices and links to them (or to
    nothing), never opened and not counted in ``found``.
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
    not_regular: tuple[SkippedFile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: skipped files as ``{"path", "reason"}`` objects, tuples as lists."""
        data = dataclasses.asdict(self)
        data["skipped"] = [dataclasses.asdict(skipped) for skipped in self.skipped]
        data["not_regular"] = [dataclasses.asdict(skipped) for skipped in self.not_regular]
        data["class_names"] = list(self.class_names) if self.class_names is not None else None
        return data


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images ``(N, C, H, W)`` float32, their class labels (ImageFolder layout only), and the report.

    ``files`` are the images' paths relative to the folder, one per row of ``images``.
    """

    images: np.ndarray
    labels: np.ndarray | None
    report: ImageSetReport
    cache_hit: bool
    files: tuple[str, ...]


def _sample(listing: ImageListing, limit: int | None, seed: int) -> list[tuple[Path, int | None]]:
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


def _hash_file(path: Path, max_pixels: int) -> str | BadImageError:
    try:
        with open_image_file(path, max_pixels) as handle:
            return sha256_of_handle(handle)
    except BadImageError as error:
        return error
    except OSError as error:
        return UnreadableImageError(
            path, f"cannot be read ({error.strerror or error})", "check the file's permissions"
        )


def _run_pool(
    work: Callable[[_Item], _Result], items: Sequence[_Item], workers: int, bar: Any = None
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
    if not os.path.lexists(path):
        return None
    try:
        with open_regular(path, "image cache") as handle, np.load(handle, allow_pickle=False) as archive:
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
    return min(32, usable_cores())


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
) -> ImageSet:
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

    listing = scan_images(folder)
    line = listing.not_regular_line()
    if line is not None:
        logger.warning(line)
    if not listing.entries:
        special = f"; {len(listing.not_regular)} not regular files skipped" if listing.not_regular else ""
        raise ImageSetError(
            f"image folder {listing.folder} holds no images ({listing.ignored} other files or hidden entries"
            f"{special}); add {', '.join(IMAGE_EXTENSIONS)} files"
        )
    sampled = _sample(listing, limit, seed)
    names = [listing.relative(path) for path, _ in sampled]
    hashes = _run_pool(lambda path: _hash_file(path, max_pixels), [path for path, _ in sampled], workers)
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
            mark_used(cache_path)
            images, labels, fields = cached
            logger.info("image set of %s read from cache %s", listing.folder, cache_path)
            report = _report(
                listing,
                len(sampled),
                fields["used"],
                [SkippedFile(**skip) for skip in fields["skipped"]],
                fields["dataset_sha256"],
            )
            return ImageSet(images, labels, report, cache_hit=True, files=tuple(fields["files"]))

    crop_height, crop_width = preprocessing.crop
    images = np.empty((len(readable), channels, crop_height, crop_width), dtype=np.float32)

    def decode(index: int) -> BadImageError | None:
        path = readable[index][1][0]
        try:
            images[index] = preprocess(load_image(path, channels, max_pixels), preprocessing)
        except BadImageError as error:
            return error
        return None

    with progress_bar(total=len(readable), desc="images", unit="img", enabled=progress) as bar:
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
        trim_cache(cache_path.parent, keep=cache_path)
    return ImageSet(images, labels, report, cache_hit=False, files=files)


def _report(
    listing: ImageListing, sampled: int, used: int, skipped: Sequence[SkippedFile], used_hash: str
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
        not_regular=listing.not_regular,
    )


CalibrationSet = ImageSet
"""Deprecated alias: the same set serves calibration, training and evaluation."""
