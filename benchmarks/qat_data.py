"""Cluttered, tilted digits: a harder task than the shipped digits, generated deterministically (no download).

Each of scikit-learn's 1,797 bundled 8x8 digits is upscaled and drawn several times onto a 32x32 grey canvas,
turned 6-30 degrees to the left or the right: the class is the digit and the way it leans (``3L``, ``3R``: 20
fine-grained classes). Each rendering is also scaled (0.75-1.2) and shifted (+-4 px), over a fragment of another
digit (the clutter, 30-70% as bright), at a random contrast (0.45-1.0) and background level, with Gaussian noise
(sigma 10-30 of 255). The held-out images come from other source digits than the training images (the same
seed-0 split as ``tests/digits_images.py``), so a network cannot pass by remembering a source digit. Written as
ImageFolder PNGs through Pillow, read back through sedeploy's own pipeline, as every other sedeploy data set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
TRAIN_VARIANTS = 4
HELDOUT_VARIANTS = 4
HELDOUT_SHARE = 0.25
TILTS = ("L", "R")
"""The class is the digit and the way it leans: ``3L`` (turned left, counter-clockwise) or ``3R``."""


def _digit(pixels: np.ndarray, size: int) -> Image.Image:
    """One 8x8 digit (0..16) as a ``size`` x ``size`` greyscale image (0..255), bicubic."""
    image = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    return image.resize((size, size), Image.Resampling.BICUBIC)


def _placed(
    digit: Image.Image, rng: np.random.Generator, angle: float, scale: tuple[float, float]
) -> np.ndarray:
    """``digit`` turned by ``angle`` degrees, scaled and shifted onto a black ``IMAGE_SIZE`` canvas, in [0, 1]."""
    factor = rng.uniform(*scale)
    side = max(8, round(24 * factor))
    turned = digit.resize((side, side), Image.Resampling.BILINEAR).rotate(
        angle, resample=Image.Resampling.BILINEAR, expand=True
    )
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE))
    dx, dy = rng.integers(-4, 5, size=2)
    canvas.paste(
        turned, ((IMAGE_SIZE - turned.width) // 2 + int(dx), (IMAGE_SIZE - turned.height) // 2 + int(dy))
    )
    return np.asarray(canvas, np.float32) / 255.0


def cluttered(main: np.ndarray, other: np.ndarray, tilt: int, rng: np.random.Generator) -> np.ndarray:
    """One cluttered 32x32 uint8 image of the 8x8 digit ``main``, turned 6-30 degrees to the left (``tilt`` 0)
    or right (1), with a fragment of ``other`` behind it."""
    magnitude = rng.uniform(6.0, 30.0)
    digit = _placed(_digit(main, 24), rng, magnitude if tilt == 0 else -magnitude, (0.75, 1.2))
    clutter = _placed(_digit(other, 24), rng, rng.uniform(-180.0, 180.0), (0.6, 1.3))
    half = rng.integers(0, 4)  # keep one half of the other digit: a stroke fragment, not a second digit
    mask = np.ones_like(clutter)
    if half == 0:
        mask[:, : IMAGE_SIZE // 2] = 0
    elif half == 1:
        mask[:, IMAGE_SIZE // 2 :] = 0
    elif half == 2:
        mask[: IMAGE_SIZE // 2] = 0
    else:
        mask[IMAGE_SIZE // 2 :] = 0
    clutter *= mask * rng.uniform(0.3, 0.7)
    ink = np.maximum(digit, clutter)
    background = rng.uniform(0.0, 0.35)
    contrast = rng.uniform(0.45, 1.0)
    image = background + contrast * ink * (1.0 - background)
    image += rng.normal(0.0, rng.uniform(10.0, 30.0) / 255.0, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_cluttered_digits(
    root: str | os.PathLike[str],
    *,
    train_variants: int = TRAIN_VARIANTS,
    heldout_variants: int = HELDOUT_VARIANTS,
    calibration_count: int = 256,
    seed: int = 0,
) -> tuple[Path, Path, Path]:
    """Write ``train/`` and ``heldout/`` (ImageFolder, classes ``0``..``9``) and a flat ``calibration/`` (the
    first ``calibration_count`` training images) under ``root``; the same arguments give the same bytes."""
    from sklearn import datasets

    digits = datasets.load_digits()
    root = Path(root)
    order = np.random.default_rng(seed).permutation(len(digits.images))
    heldout_count = int(len(order) * HELDOUT_SHARE)
    rng = np.random.default_rng(seed + 1)
    train_dir, heldout_dir, calibration_dir = root / "train", root / "heldout", root / "calibration"
    calibration_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for position, index in enumerate(order):
        heldout = position < heldout_count
        split = heldout_dir if heldout else train_dir
        pool = order[:heldout_count] if heldout else order[heldout_count:]  # clutter from the same split
        for variant in range(heldout_variants if heldout else train_variants):
            tilt = variant % 2
            folder = split / f"{digits.target[index]}{TILTS[tilt]}"
            folder.mkdir(parents=True, exist_ok=True)
            other = digits.images[pool[rng.integers(len(pool))]]
            image = Image.fromarray(cluttered(digits.images[index], other, tilt, rng), mode="L")
            name = f"{index:04d}-{variant}.png"
            image.save(folder / name)
            if not heldout and written < calibration_count:
                image.save(calibration_dir / name)
                written += 1
    return train_dir, heldout_dir, calibration_dir
