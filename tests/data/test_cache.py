"""The decoded-image cache: its location (platform default, environment), its cap (least recently used go
first) and clearing it touch only cached sets (issue 33 item 6)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.data import load_image_set
from sedeploy.data.cache import cache_dir, cache_info, clear_cache, trim_cache
from sedeploy.errors import ConfigError

PREPROCESSING = Preprocessing(
    resize=(8, 8), crop=(8, 8), crop_pct=1.0, mean=(0.5,), std=(0.5,), interpolation="bilinear"
)


def _folder(root: Path, name: str, count: int) -> Path:
    folder = root / name
    folder.mkdir()
    rng = np.random.default_rng(len(name))
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def test_the_cache_lives_where_the_platform_or_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEDEPLOY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "sedeploy" / "images"
    monkeypatch.setenv("SEDEPLOY_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("SEDEPLOY_CACHE_MAX_MB", "lots")
    with pytest.raises(ConfigError, match="SEDEPLOY_CACHE_MAX_MB='lots' is not a number"):
        cache_info()


def test_the_least_recently_used_sets_go_first_and_clear_touches_only_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEDEPLOY_CACHE_DIR", str(cache))
    first, second = _folder(tmp_path, "a", 6), _folder(tmp_path, "bb", 6)
    load_image_set(first, PREPROCESSING, 1, cache_dir=cache)
    (only,) = cache.glob("images-*.npz")
    old = time.time() - 3600
    os.utime(only, (old, old))
    size = only.stat().st_size
    assert load_image_set(first, PREPROCESSING, 1, cache_dir=cache).cache_hit  # a hit makes it recent again
    load_image_set(second, PREPROCESSING, 1, cache_dir=cache)
    assert cache_info(cache).files == 2
    (cache / "notes.txt").write_text("not a set")
    kept = max(cache.glob("images-*.npz"), key=lambda path: path.stat().st_mtime)
    assert trim_cache(cache, limit_bytes=size + 10) == 1  # the older of the two goes
    assert list(cache.glob("images-*.npz")) == [kept]
    before = clear_cache(cache)
    assert before.files == 1 and cache_info(cache).files == 0 and (cache / "notes.txt").is_file()


def test_a_write_keeps_the_cache_under_its_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEDEPLOY_CACHE_MAX_MB", "0.0001")  # about 100 bytes: one set is already over
    for name in ("a", "bb", "ccc"):
        load_image_set(_folder(tmp_path, name, 4), PREPROCESSING, 1, cache_dir=cache)
    assert cache_info(cache).files <= 1


def test_sedeploy_cache_reports_and_clears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from click.testing import CliRunner

    from sedeploy.cli import cli

    cache = tmp_path / "cache"
    monkeypatch.setenv("SEDEPLOY_CACHE_DIR", str(cache))
    load_image_set(_folder(tmp_path, "a", 4), PREPROCESSING, 1, cache_dir=cache)
    shown = CliRunner().invoke(cli, ["cache", "--json", "-"])
    assert shown.exit_code == 0 and json.loads(shown.output)["files"] == 1
    cleared = CliRunner().invoke(cli, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "removed 1 cached image set(s)" in cleared.output
    assert cache_info(cache).files == 0
