"""The shipped digits model exported once for the INT8 error-analysis and repair tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sedeploy.artifacts.metadata import read_metadata
from sedeploy.data import load_image_set
from sedeploy.export import export_onnx

REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED = REPOSITORY / "models" / "digits_se_resnet"
CALIBRATION = REPOSITORY / "calibration"


@dataclass(frozen=True)
class ShippedDigits:
    """The shipped checkpoint as FP32 ONNX, its held-out images and labels, and calibration images."""

    onnx_path: Path
    heldout: np.ndarray
    labels: np.ndarray
    calibration: np.ndarray


@pytest.fixture(scope="session")
def shipped_digits(tmp_path_factory: pytest.TempPathFactory) -> ShippedDigits:
    path = tmp_path_factory.mktemp("shipped") / "digits.onnx"
    export_onnx(weights=SHIPPED / "model.safetensors", output=path, check=False)
    preprocessing = read_metadata(path).preprocessing
    heldout = load_image_set(SHIPPED / "heldout", preprocessing, 1)
    calibration = load_image_set(CALIBRATION, preprocessing, 1, limit=128)
    assert heldout.labels is not None
    return ShippedDigits(path, heldout.images, heldout.labels, calibration.images)
