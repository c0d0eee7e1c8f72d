"""The decoded-image cache: where it lives, how large it may grow, and how to clear it.

Calibration and held-out sets are decoded and preprocessed once and stored as ``images-<key>.npz`` (the key
covers the files' contents and the preprocessing, :mod:`sedeploy.data.sets`). The cache lives in the
platform's cache directory (``$XDG_CACHE_HOME/sedeploy/images``, else ``~/.cache/sedeploy/images``), or where
``SEDEPLOY_CACHE_DIR`` says; it is kept under ``SEDEPLOY_CACHE_MAX_MB`` (default 2048 MB) by removing the
least recently used sets after each write; ``sedeploy cache --clear`` (:func:`clear_cache`) empties it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedeploy.errors import ConfigError

CACHE_DIR_ENV = "SEDEPLOY_CACHE_DIR"
CACHE_LIMIT_ENV = "SEDEPLOY_CACHE_MAX_MB"
DEFAULT_CACHE_LIMIT_MB = 2048
CACHE_PATTERN = "images-*.npz"
"""What the cache holds; nothing else in its folder is ever removed."""


def cache_dir() -> Path:
    """Where decoded image sets are cached: ``SEDEPLOY_CACHE_DIR``, else the platform's cache directory."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sedeploy" / "images"


def cache_limit_bytes() -> int:
    """The cache's size cap in bytes (``SEDEPLOY_CACHE_MAX_MB``; 0 keeps nothing)."""
    text = os.environ.get(CACHE_LIMIT_ENV)
    if text is None or text == "":
        return DEFAULT_CACHE_LIMIT_MB * 2**20
    try:
        megabytes = float(text)
    except ValueError:
        raise ConfigError(
            f"{CACHE_LIMIT_ENV}={text!r} is not a number of megabytes; set it to e.g. 2048"
        ) from None
    if megabytes < 0:
        raise ConfigError(f"{CACHE_LIMIT_ENV} must be 0 or more megabytes, got {text}")
    return int(megabytes * 2**20)


@dataclass(frozen=True)
class CacheInfo:
    """What the cache holds: its folder, sets, bytes and cap."""

    folder: Path
    files: int
    bytes: int
    limit_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "files": self.files,
            "bytes": self.bytes,
            "limit_bytes": self.limit_bytes,
        }

    def to_text(self) -> str:
        return (
            f"image cache {self.folder}: {self.files} set(s), {self.bytes / 2**20:.1f} MB "
            f"of {self.limit_bytes / 2**20:.0f} MB ({CACHE_DIR_ENV}, {CACHE_LIMIT_ENV} change them)"
        )


def _entries(folder: Path) -> list[tuple[float, int, Path]]:
    """(last use, size, path) of every cached set that is a regular file, oldest first."""
    entries = []
    for path in folder.glob(CACHE_PATTERN) if folder.is_dir() else ():
        try:
            stat = path.lstat()
        except OSError:
            continue
        if path.is_file() and not path.is_symlink():
            entries.append((max(stat.st_mtime, stat.st_atime), stat.st_size, path))
    return sorted(entries)


def cache_info(folder: Path | None = None) -> CacheInfo:
    folder = folder or cache_dir()
    entries = _entries(folder)
    return CacheInfo(folder, len(entries), sum(size for _, size, _ in entries), cache_limit_bytes())


def mark_used(path: Path) -> None:
    """Record a hit, so the least recently *used* sets go first (access times are often not kept)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def trim_cache(folder: Path | None = None, limit_bytes: int | None = None, keep: Path | None = None) -> int:
    """Remove the least recently used sets until the cache is within its cap; returns how many went.

    ``keep``: a set just written, removed last (only when it alone is over the cap).
    """
    folder = folder or cache_dir()
    limit = cache_limit_bytes() if limit_bytes is None else limit_bytes
    entries = _entries(folder)
    if keep is not None:
        entries.sort(key=lambda entry: entry[2] == keep)  # stable: oldest first, the one just written last
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in entries:
        if total <= limit:
            break
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        removed += 1
    return removed


def clear_cache(folder: Path | None = None) -> CacheInfo:
    """Remove every cached set (nothing else in the folder); returns what was there."""
    folder = folder or cache_dir()
    before = cache_info(folder)
    for _, _, path in _entries(folder):
        path.unlink(missing_ok=True)
    return before
