"""Image sets: odd files load or are skipped as documented, preprocessing matches a hand computation,
sampling is deterministic, class folders give labels, the cache hits and invalidates, bad input fails clearly."""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from bad_inputs_cases import SPECIAL_NAMES, special_files
from onnx import TensorProto, helper
from PIL import Image

from sedeploy.artifacts.metadata import ModelMetadata, Preprocessing, write_metadata
from sedeploy.data import (
    IMAGE_EXTENSIONS,
    ImageSetError,
    ImageTooLargeError,
    MissingPreprocessingError,
    UnreadableImageError,
    image_bytes_limit,
    images_decoded,
    list_images,
    listed_images_among,
    load_image,
    load_image_set,
    preprocess,
    preprocessing_for,
    scan_images,
)
from sedeploy.errors import BadInputError, ConfigError

SMALL = Preprocessing(
    resize=(8,), crop=(8, 8), crop_pct=1.0, mean=(0.5,), std=(0.5,), interpolation="bilinear"
)
RED = (220, 20, 30)
BLUE = (20, 30, 220)


def _is_red(pixel: tuple[int, ...]) -> bool:
    return pixel[0] > 180 and pixel[1] < 70 and pixel[2] < 70


def _rgb(width: int = 16, height: int = 12, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _solid(value: int, size: tuple[int, int] = (10, 10)) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def _truncated_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header is intact but whose pixel data is cut off."""
    _rgb(width, height).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _exif_rotated_jpeg(path: Path) -> Path:
    """A 20x10 JPEG, red block at its stored top-left, tagged orientation 6 (display rotated 90 degrees clockwise)."""
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.paste(RED, (0, 0, 4, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, quality=95, exif=exif)
    return path


def _make_odd_folder(folder: Path) -> dict[str, str]:
    """Every odd case of the issue; returns each file's expected outcome: "used", "corrupt" or "too large"."""
    folder.mkdir()
    _exif_rotated_jpeg(folder / "exif_rotated.jpg")
    _rgb().convert("P").save(folder / "palette.png")
    gray16 = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(folder / "cmyk.JPG")
    Image.new("RGBA", (16, 12), (200, 100, 50, 128)).save(folder / "rgba.png")
    Image.new("LA", (16, 12), (100, 200)).save(folder / "la.png")
    _rgb().save(folder / "lossless.webp", lossless=True)
    _rgb().save(folder / "photo.tif")
    _rgb().save(folder / "photo.TIFF")
    _rgb().save(folder / "photo.bmp")
    _rgb().convert("L").save(folder / "gray.jpeg")
    frames = [Image.new("RGB", (16, 12), RED), Image.new("RGB", (16, 12), BLUE)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(folder / "animated.png", save_all=True, append_images=frames[1:], duration=100)
    Image.new("RGB", (1, 1), RED).save(folder / "one_pixel.png")
    (folder / "empty.jpg").write_bytes(b"")
    truncated = _rgb(64, 48).tobytes()
    _rgb(64, 48).save(folder / "truncated.jpg", quality=90)
    (folder / "truncated.jpg").write_bytes((folder / "truncated.jpg").read_bytes()[:300])
    (folder / "random.png").write_bytes(np.random.default_rng(1).bytes(2048))
    _rgb(100, 100).save(folder / "huge.png")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".hidden.png").write_bytes(truncated[:100])
    expected = {path.name: "used" for path in folder.iterdir() if not path.name.endswith((".txt",))}
    expected.pop(".hidden.png")
    expected.update({"empty.jpg": "corrupt", "truncated.jpg": "corrupt", "random.png": "corrupt"})
    expected["huge.png"] = "too large"
    return expected


ODD_MAX_PIXELS = 5_000
"""Every odd image but ``huge.png`` (100x100) is at most 16x12 pixels."""


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("odd") / "images"
    return folder, _make_odd_folder(folder)


@pytest.mark.parametrize("channels", [1, 3])
def test_odd_images_load_or_skip_and_counts_match(
    odd_folder: tuple[Path, dict[str, str]], channels: int, caplog: pytest.LogCaptureFixture
) -> None:
    folder, expected = odd_folder
    image_set = load_image_set(folder, SMALL, channels, max_pixels=ODD_MAX_PIXELS, workers=4)
    report = image_set.report

    used = sorted(name for name, outcome in expected.items() if outcome == "used")
    skipped = {skip.path: skip.reason for skip in report.skipped}
    assert sorted(image_set.files) == used
    assert sorted(skipped) == sorted(name for name, outcome in expected.items() if outcome != "used")
    for name, reason in skipped.items():
        assert ("too large" in reason) == (expected[name] == "too large"), (name, reason)
    assert report.found == len(expected) == report.sampled
    assert report.used == len(used) == image_set.images.shape[0]
    assert report.used + len(report.skipped) == report.sampled
    assert report.ignored == 2  # notes.txt and .hidden.png
    assert report.class_names is None and image_set.labels is None
    assert image_set.images.shape == (len(used), channels, 8, 8)
    assert image_set.images.dtype == np.float32 and np.isfinite(image_set.images).all()
    assert image_set.images.min() >= -1.0 and image_set.images.max() <= 1.0
    assert all(any(name in record.getMessage() for record in caplog.records) for name in skipped)
    json.dumps(report.to_dict())


def test_each_odd_image_is_converted_as_documented(odd_folder: tuple[Path, dict[str, str]]) -> None:
    folder, _ = odd_folder

    upright = load_image(folder / "exif_rotated.jpg", 3)
    assert upright.size == (10, 20)  # stored 20x10, shown rotated
    assert _is_red(upright.getpixel((9, 0))) and not _is_red(upright.getpixel((0, 0)))

    gray16 = np.asarray(load_image(folder / "gray16.png", 1))
    source = (np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16)
    np.testing.assert_array_equal(gray16, np.rint(source / 257).astype(np.uint8))

    assert _is_red(load_image(folder / "cmyk.JPG", 3).getpixel((5, 5)))
    assert load_image(folder / "rgba.png", 3).getpixel((0, 0)) == (100, 50, 25)  # on black: value * 128 / 255
    assert load_image(folder / "la.png", 1).getpixel((0, 0)) == 78  # 100 * 200 / 255
    for name in ("animated.gif", "animated.png"):
        assert _is_red(load_image(folder / name, 3).getpixel((0, 0)))  # first frame, not the blue one
    for name in ("photo.tif", "photo.TIFF", "photo.bmp", "lossless.webp"):
        np.testing.assert_array_equal(np.asarray(load_image(folder / name, 3)), np.asarray(_rgb()))
    palette = load_image(folder / "palette.png", 3)
    assert palette.mode == "RGB" and palette.size == (16, 12)

    as_gray = load_image(folder / "one_pixel.png", 1)
    assert as_gray.mode == "L" and as_gray.getpixel((0, 0)) == Image.new("RGB", (1, 1), RED).convert(
        "L"
    ).getpixel((0, 0))
    as_rgb = np.asarray(load_image(folder / "gray.jpeg", 3))
    assert as_rgb.shape == (12, 16, 3) and (as_rgb[..., 0] == as_rgb[..., 2]).all()
    assert preprocess(as_gray, SMALL).shape == (1, 8, 8)

    for name in ("empty.jpg", "truncated.jpg", "random.png"):
        with pytest.raises(UnreadableImageError) as error:
            load_image(folder / name, 3)
        assert isinstance(error.value, BadInputError) and name in str(error.value)


def test_too_large_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _truncated_png(tmp_path / "big.png", 200, 100)
    before = images_decoded()
    with pytest.raises(ImageTooLargeError, match="200x100"):
        load_image(path, 3, max_pixels=10_000)
    assert images_decoded() == before  # the truncated pixel data was never read
    with pytest.raises(UnreadableImageError):
        load_image(path, 3)
    assert images_decoded() == before + 1


def test_preprocess_matches_hand_computation() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.25, 0.2])
    preprocessing = Preprocessing((6,), (4, 4), 1.0, tuple(mean), tuple(std), "bilinear")
    result = preprocess(Image.fromarray(pixels), preprocessing)
    expected = ((pixels[1:5, 2:6] / 255.0 - mean) / std).transpose(2, 0, 1)
    assert result.dtype == np.float32 and result.shape == (3, 4, 4)
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)

    small = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    exact = Preprocessing((4, 6), (4, 6), 1.0, (0.0,), (1.0,), "nearest")
    upscaled = preprocess(Image.fromarray(small), exact)
    np.testing.assert_allclose(
        upscaled[0], np.repeat(np.repeat(small, 2, axis=0), 2, axis=1) / 255.0, atol=1e-7
    )

    short_side = Preprocessing((5,), (5, 5), 1.0, (0.0,), (1.0,), "bicubic")
    assert preprocess(_rgb(20, 10), short_side).shape == (3, 5, 5)

    padded = preprocess(
        Image.new("L", (2, 2), 255), Preprocessing((2,), (4, 4), 1.0, (0.5,), (0.25,), "bilinear")
    )
    expected_padded = np.full((4, 4), -2.0)
    expected_padded[1:3, 1:3] = 2.0
    np.testing.assert_allclose(padded[0], expected_padded, atol=1e-6)

    with pytest.raises(BadInputError, match="mode 'RGBA'"):
        preprocess(Image.new("RGBA", (4, 4)), SMALL)


def _numbered_folder(folder: Path, count: int) -> Path:
    """``count`` PNGs; image i is a solid gray of value i, so a preprocessed row tells which file it was."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        _solid(index).save(folder / f"img{index:03d}.png")
    return folder


def _values(images: np.ndarray) -> list[int]:
    return [round(float(value) * 255) for value in images[:, 0, 0, 0]]


NUMBERED = Preprocessing((4,), (4, 4), 1.0, (0.0,), (1.0,), "bilinear")


def test_sampling_is_deterministic_and_in_path_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _numbered_folder(tmp_path / "images", 30)
    with caplog.at_level(logging.INFO, logger="sedeploy.progress"):
        first = load_image_set(folder, NUMBERED, 1, limit=7, seed=0, progress=True)
    # no terminal here: the progress is lines of the sedeploy.progress log, a start and an end
    lines = [record.getMessage() for record in caplog.records if record.name == "sedeploy.progress"]
    assert lines[0] == "images: started (7 img)" and lines[-1].startswith("images: done, 7/7 img in ")
    again = load_image_set(folder, NUMBERED, 1, limit=7, seed=0, workers=1)
    other_seed = load_image_set(folder, NUMBERED, 1, limit=7, seed=1)

    assert first.files == again.files and len(first.files) == 7
    assert list(first.files) == sorted(first.files)
    assert _values(first.images) == [int(name[3:6]) for name in first.files]
    np.testing.assert_array_equal(first.images, again.images)
    assert first.report.dataset_sha256 == again.report.dataset_sha256
    assert other_seed.files != first.files
    assert other_seed.report.dataset_sha256 != first.report.dataset_sha256
    assert (first.report.found, first.report.sampled, first.report.used) == (30, 7, 7)

    _solid(99).save(folder / "img999.png")
    grown = load_image_set(folder, NUMBERED, 1, limit=7, seed=0)
    assert len(set(grown.files) - set(first.files)) <= 1

    everything = load_image_set(folder, NUMBERED, 1, limit=1000)
    assert everything.report.used == 31 and everything.report.sampled == 31


def test_class_folders_give_labels(tmp_path: Path) -> None:
    folder = tmp_path / "classes"
    for name, values in (("dog", (1, 2)), ("cat", (10, 11, 12))):
        (folder / name / "nested").mkdir(parents=True)
        for value in values:
            _solid(value).save(folder / name / f"{value}.png")
    _solid(13).save(folder / "cat" / "nested" / "13.png")
    (folder / "empty_class").mkdir()
    (folder / "README.txt").write_text("class folders\n")

    entries, class_names = list_images(folder)
    assert class_names == ("cat", "dog", "empty_class")
    assert [(path.relative_to(folder).as_posix(), label) for path, label in entries] == [
        ("cat/10.png", 0),
        ("cat/11.png", 0),
        ("cat/12.png", 0),
        ("cat/nested/13.png", 0),
        ("dog/1.png", 1),
        ("dog/2.png", 1),
    ]
    image_set = load_image_set(folder, NUMBERED, 3)
    assert image_set.labels is not None and image_set.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert _values(image_set.images) == [10, 11, 12, 13, 1, 2]
    assert image_set.report.class_names == class_names and image_set.report.ignored == 1

    _solid(50).save(folder / "stray.png")
    _, flat_names = list_images(folder)
    assert flat_names is None  # an image beside the class folders makes the folder flat


def test_cache_hits_without_decoding_and_invalidates(tmp_path: Path) -> None:
    folder = _numbered_folder(tmp_path / "images", 12)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    cache_dir = tmp_path / "cache"

    built = load_image_set(folder, NUMBERED, 3, limit=10, cache_dir=cache_dir)
    before = images_decoded()
    hit = load_image_set(folder, NUMBERED, 3, limit=10, cache_dir=cache_dir)
    assert not built.cache_hit and hit.cache_hit
    assert images_decoded() == before
    np.testing.assert_array_equal(hit.images, built.images)
    assert hit.report == built.report and hit.files == built.files
    (cache_entry,) = cache_dir.iterdir()  # one entry, no temporary file left
    assert cache_entry.suffix == ".npz"
    cache_entry.write_bytes(b"damaged")
    assert not load_image_set(folder, NUMBERED, 3, limit=10, cache_dir=cache_dir).cache_hit
    assert load_image_set(folder, NUMBERED, 3, limit=10, cache_dir=cache_dir).cache_hit
    before = images_decoded()

    changed = folder / hit.files[0]
    _solid(200).save(changed)
    rebuilt = load_image_set(folder, NUMBERED, 3, limit=10, cache_dir=cache_dir)
    assert not rebuilt.cache_hit and images_decoded() > before
    assert rebuilt.report.dataset_sha256 != built.report.dataset_sha256
    assert _values(rebuilt.images)[0] == 200

    other_preprocessing = Preprocessing((4,), (4, 4), 1.0, (0.5,), (1.0,), "bilinear")
    assert not load_image_set(folder, other_preprocessing, 3, limit=10, cache_dir=cache_dir).cache_hit
    assert not load_image_set(folder, NUMBERED, 1, limit=10, cache_dir=cache_dir).cache_hit
    assert not load_image_set(folder, NUMBERED, 3, limit=10, seed=5, cache_dir=cache_dir).cache_hit
    assert load_image_set(folder, NUMBERED, 3, limit=10, cache_dir=cache_dir).cache_hit


def test_bad_folders_fail_with_one_clear_line(tmp_path: Path) -> None:
    def error_of(folder: Path) -> str:
        with pytest.raises(ImageSetError) as error:
            load_image_set(folder, SMALL, 3)
        message = str(error.value)
        assert "\n" not in message and str(folder) in message
        return message

    assert "does not exist" in error_of(tmp_path / "missing")
    a_file = tmp_path / "image.png"
    _solid(1).save(a_file)
    assert "is a file, not a folder" in error_of(a_file)
    (tmp_path / "empty").mkdir()
    assert "holds no images" in error_of(tmp_path / "empty")
    (tmp_path / "text_only").mkdir()
    (tmp_path / "text_only" / "notes.txt").write_text("hello")
    assert "holds no images (1 other" in error_of(tmp_path / "text_only")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.jpg").write_bytes(b"")
    (corrupt / "b.png").write_bytes(b"garbage")
    message = error_of(corrupt)
    assert "no usable images" in message and "all 2 image file(s)" in message and "a.jpg" in message

    with pytest.raises(ConfigError, match=r"1 \(grayscale\) or 3 \(RGB\)"):
        load_image_set(tmp_path, SMALL, 4)
    with pytest.raises(ConfigError, match="at least 1"):
        load_image_set(tmp_path, SMALL, 3, limit=0)
    with pytest.raises(ConfigError, match="unknown interpolation"):
        load_image_set(tmp_path, Preprocessing((8,), (8, 8), 1.0, (0.5,), (0.5,), "cubic-ish"), 3)


def _tiny_onnx(path: Path, metadata: ModelMetadata | None) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 28, 28])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if metadata is not None:
        write_metadata(model, metadata)
    onnx.save(model, str(path))
    return path


def test_preprocessing_from_metadata_flags_and_clear_errors(tmp_path: Path) -> None:
    stored = Preprocessing((32,), (28, 28), 0.875, (0.45,), (0.22,), "bicubic")
    metadata = ModelMetadata(
        arch="seresnet18",
        options={"in_chans": 1},
        input_size=(1, 28, 28),
        num_classes=10,
        preprocessing=stored,
        params=1,
        macs=1,
        opset=18,
        max_batch=8,
        sedeploy_version="0",
        channel_order="GRAY",
    )
    with_metadata = _tiny_onnx(tmp_path / "with.onnx", metadata)
    assert preprocessing_for(with_metadata) == (stored, 1)
    assert preprocessing_for(metadata) == (stored, 1)

    overridden, channels = preprocessing_for(with_metadata, img_size=56, mean=[0.5], interpolation="bilinear")
    assert channels == 1
    assert overridden == Preprocessing((64,), (56, 56), 0.875, (0.5,), (0.22,), "bilinear")
    assert preprocessing_for(with_metadata, resize=[30, 40], img_size=[28, 36])[0].resize == (30, 40)
    as_rgb, rgb_channels = preprocessing_for(with_metadata, channels=3)
    assert rgb_channels == 3 and as_rgb.mean == (0.45,) * 3

    bare = _tiny_onnx(tmp_path / "bare.onnx", None)
    with pytest.raises(MissingPreprocessingError) as error:
        preprocessing_for(bare)
    assert str(bare) in str(error.value) and "img_size, mean, std" in str(error.value)
    assert error.value.exit_code == 2
    with pytest.raises(MissingPreprocessingError, match="add std "):
        preprocessing_for(bare, img_size=28, mean=[0.5])
    from_flags, flag_channels = preprocessing_for(bare, img_size=28, mean=[0.5], std=[0.2])
    assert flag_channels == 1
    assert from_flags == Preprocessing((32,), (28, 28), 0.875, (0.5,), (0.2,), "bilinear")
    assert preprocessing_for(bare, img_size=28, mean=[0.5], std=[0.2], channels=3)[0].std == (0.2,) * 3

    with pytest.raises(ConfigError, match="takes 1 channel"):
        preprocessing_for(with_metadata, mean=[0.1, 0.2, 0.3], std=[0.2, 0.2, 0.2])
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("not a model")
    with pytest.raises(BadInputError, match="not a readable ONNX file"):
        preprocessing_for(not_onnx)
    with pytest.raises(BadInputError, match="does not exist"):
        preprocessing_for(tmp_path / "absent.onnx")


def test_extensions_are_case_insensitive(tmp_path: Path) -> None:
    for index, extension in enumerate(IMAGE_EXTENSIONS):
        _solid(index).save(tmp_path / f"img{index}{extension.upper()}", format="PNG")
    entries, _ = list_images(tmp_path)
    assert len(entries) == len(IMAGE_EXTENSIONS)
    image_set = load_image_set(tmp_path, NUMBERED, 1)
    assert image_set.report.used == len(IMAGE_EXTENSIONS)


# Special files (issue 35): a pipe, a socket and links to devices named like images are never opened by a walk.


@pytest.fixture()
def _no_hang() -> Iterator[None]:
    """A walk that opened a pipe would block for good: end the run with every thread's stack instead."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.mark.usefixtures("_no_hang")
@pytest.mark.parametrize("layout", ["flat", "classes"])
def test_a_walk_skips_special_files_and_names_them_in_one_line(
    tmp_path: Path, layout: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "images"
    inner = [folder / "a", folder / "b"] if layout == "classes" else [folder]
    for target in inner:
        target.mkdir(parents=True)
        _rgb().save(target / "real.png")
        special_files(target)
    if layout == "classes":
        special_files(folder / "top")  # a folder of special files: a third class, with no image
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        image_set = load_image_set(folder, SMALL, 3)
    assert time.monotonic() - started < 30
    report = image_set.report
    prefix = [f"{target.name}/" for target in inner] if layout == "classes" else [""]
    names = sorted(f"{where}{name}" for where in prefix for name in SPECIAL_NAMES)
    if layout == "classes":
        names = sorted([*names, *(f"top/{name}" for name in SPECIAL_NAMES)])
    assert [skip.path for skip in report.not_regular] == names
    assert report.found == report.used == len(inner) and not report.skipped
    lines = [record.getMessage() for record in caplog.records if "not regular files" in record.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"skipped {len(names)} files that are not regular files in {folder}: ")
    assert f"{prefix[0]}zero.png (a link to /dev/zero, a character device)" in lines[0]
    assert (
        f"{prefix[0]}pipe.png (a named pipe)" in lines[0] and f"{prefix[0]}socket.png (a socket)" in lines[0]
    )
    assert json.loads(json.dumps(report.to_dict()))["not_regular"][0]["reason"].endswith("not a regular file")
    assert scan_images(folder).not_regular == report.not_regular  # the walk itself opens nothing


@pytest.mark.usefixtures("_no_hang")
def test_special_files_named_directly_and_a_folder_that_is_one_are_refused(tmp_path: Path) -> None:
    made = special_files(tmp_path / "in")
    for path in made.values():
        with pytest.raises(UnreadableImageError, match=r"not a regular file; replace or remove the file"):
            load_image(path, 3)
    os.mkfifo(tmp_path / "calib")
    with pytest.raises(ImageSetError, match="calib is a named pipe, not a folder"):
        load_image_set(tmp_path / "calib", SMALL, 3)
    with pytest.raises(ImageSetError, match=r"holds no images .*6 not regular files skipped"):
        load_image_set(tmp_path / "in", SMALL, 3)


def test_an_image_file_larger_than_any_allowed_picture_is_refused_unread(tmp_path: Path) -> None:
    """8 bytes per allowed pixel plus 16 MiB of metadata: past that, a file is not a picture of allowed size."""
    assert image_bytes_limit(100) == 800 + 16 * 2**20
    path = tmp_path / "padded.png"
    _rgb().save(path)
    with open(path, "r+b") as handle:  # a real PNG followed by a sparse hole: trailing bytes Pillow ignores
        handle.truncate(image_bytes_limit(100) + 1)
    assert load_image(path, 3, max_pixels=200).size == (16, 12)
    with pytest.raises(UnreadableImageError, match=r"padded.png: \d+ bytes, more than the \d+ allowed"):
        load_image(path, 3, max_pixels=100)


def test_listed_images_among_follows_the_walk_rules(tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    (folder / ".hidden").mkdir(parents=True)
    for name in ("a.png", "notes.txt", ".hidden/b.png"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(folder / "a.png")
    paths = [folder / "a.png", folder / "notes.txt", folder / ".hidden/b.png", tmp_path / "outside.png"]
    found = listed_images_among(folder, [*paths, tmp_path / "link.png", folder / "new.png", None])
    assert found == [folder / "a.png", tmp_path / "link.png"]  # a link into the folder is that image
