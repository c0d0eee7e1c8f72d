"""A small, real, trained SE-ResNet for precision tests: scikit-learn's bundled digits as PNG folders.

The digits (8x8, 0..16) are written as 32x32 grayscale PNGs in ImageFolder
layout, loaded back through sedeploy's own image pipeline (so training and
calibration see exactly what deployment sees), and a tiny pre-activation
SE-ResNet is trained on them for a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from digits_images import write_digits_imagefolder

import sedeploy
from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.build import BuildOptions
from sedeploy.data import load_image_set
from sedeploy.export import export_onnx

IMAGE_SIZE = 32
LABELS = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True)
class TrainedDigits:
    """The exported FP32 model, its image folders and the preprocessed test set."""

    onnx_path: Path
    train_dir: Path
    test_dir: Path
    calib_dir: Path
    test_images: np.ndarray
    test_labels: np.ndarray
    torch_accuracy: float


def write_digit_folders(
    root: Path, test_share: float = 0.25, calib_count: int = 128
) -> tuple[Path, Path, Path]:
    """Write train/ and heldout/ (class sub-folders) and calibration/ (flat, from train) under ``root``."""
    train_dir, test_dir, calib_dir = write_digits_imagefolder(
        root, heldout_share=test_share, calibration_count=calib_count, image_size=IMAGE_SIZE
    )
    assert calib_dir is not None
    return train_dir, test_dir, calib_dir


def train_digits(root: Path, epochs: int = 4, seed: int = 0) -> TrainedDigits:
    """Train the tiny SE-ResNet on the digits and export it with sedeploy; a few seconds on 2 cores."""
    torch.manual_seed(seed)
    train_dir, test_dir, calib_dir = write_digit_folders(root)
    model = sedeploy.create_model(
        "se_preact_resnet",
        depths=(1, 1, 1),
        widths=(16, 32, 64),
        in_chans=1,
        num_classes=10,
        img_size=IMAGE_SIZE,
    )
    preprocessing = Preprocessing.from_defaults(model.default_config)
    train = load_image_set(train_dir, preprocessing, 1)
    test = load_image_set(test_dir, preprocessing, 1)
    assert train.labels is not None and test.labels is not None
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(64):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(test.images)).argmax(1).numpy() == test.labels).mean())
    result = export_onnx(model, img_size=IMAGE_SIZE, in_chans=1, labels=LABELS, output=root / "digits.onnx")
    return TrainedDigits(
        onnx_path=result.path,
        train_dir=train_dir,
        test_dir=test_dir,
        calib_dir=calib_dir,
        test_images=test.images,
        test_labels=test.labels,
        torch_accuracy=accuracy,
    )


def cpu_int8_options(calib_dir: Path, **extra: object) -> BuildOptions:
    """INT8 (cpu flavour) for ONNX Runtime calibrated on ``calib_dir``: the build most tests start from."""
    settings: dict = {"precision": "int8", "backend": "onnxruntime", "target": "cpu", **extra}
    return BuildOptions(calib_dir=calib_dir, **settings)
