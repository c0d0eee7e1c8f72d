"""scikit-learn's bundled digits as image folders: the project's training and evaluation data (no download).

Test data, so it lives beside the tests (it needs the ``test`` extra's scikit-learn); benchmarks import it too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_IMAGE_SIZE = 32


def write_digits_imagefolder(
    root: str | os.PathLike[str],
    *,
    heldout_share: float = 0.25,
    calibration_count: int = 0,
    image_size: int = DIGIT_IMAGE_SIZE,
    seed: int = 0,
) -> tuple[Path, Path, Path | None]:
    """Write scikit-learn's bundled 8x8 digits as ``image_size`` grayscale PNGs: ``train/`` and ``heldout/``.

    Both are ImageFolder layout (class folders ``0`` to ``9``, files named by the
    digit's index in the dataset). The split is a permutation seeded with ``seed``;
    the first ``heldout_share`` goes to ``heldout/``. ``calibration_count`` > 0 also
    copies that many training images (never held-out ones) flat into
    ``calibration/``. Needs scikit-learn (no download: the digits ship with it).
    """
    from sklearn import datasets

    digits = datasets.load_digits()
    root = Path(root)
    order = np.random.default_rng(seed).permutation(len(digits.images))
    heldout_count = int(len(order) * heldout_share)
    train_dir, heldout_dir = root / "train", root / "heldout"
    calibration_dir = root / "calibration" if calibration_count > 0 else None
    for position, index in enumerate(order):
        pixels = (digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((image_size, image_size), Image.Resampling.BILINEAR)
        split = heldout_dir if position < heldout_count else train_dir
        folder = split / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png", optimize=True)
        if (
            calibration_dir is not None
            and split is train_dir
            and position - heldout_count < calibration_count
        ):
            calibration_dir.mkdir(parents=True, exist_ok=True)
            image.save(calibration_dir / f"{index:04d}.png", optimize=True)
    return train_dir, heldout_dir, calibration_dir
