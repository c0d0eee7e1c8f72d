"""A checkpoint's own record: the ``model.json`` (and ``labels.txt``) that ``sedeploy train`` writes beside it.

The record is the one source of truth for what the weights expect: architecture and options, input size and
channels, preprocessing, class names, and the accuracy the run measured. Every stage that takes a weights file
(export, the PyTorch runner behind ``load``/``predict``/``verify --reference``/``bench``) reads it here, so none
of them guesses a size the model was not trained at.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.errors import BadInputError
from sedeploy.files import read_regular_text, special_file_reason

RECORD_NAME = "model.json"
LABELS_NAME = "labels.txt"
RECORD_FORMAT = "sedeploy-train"
RECORD_VERSION = 1


@dataclass(frozen=True)
class TrainingRecord:
    """What a training run recorded about the checkpoint beside it.

    ``accuracy`` is the best figure the record states for data the model did not train on (the held-out
    folder's accuracy where a model card measured it, else the best epoch's validation accuracy), with
    ``accuracy_source`` saying which; None when the record states none.
    """

    path: Path
    arch: str
    options: dict[str, Any]
    input_size: tuple[int, int, int]
    preprocessing: Preprocessing
    labels: tuple[str, ...] | None
    accuracy: float | None
    accuracy_source: str

    @property
    def img_size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    def size_text(self) -> str:
        channels, height, width = self.input_size
        return f"{channels}x{height}x{width}"


def find_training_record(weights: str | os.PathLike[str]) -> TrainingRecord | None:
    """The record beside ``weights`` when its ``checkpoint`` names this file; None when there is none.

    A record that is there but unreadable, or that belongs to this file and contradicts itself, is a
    :class:`~sedeploy.errors.BadInputError`: a checkpoint whose record cannot be trusted must not run.
    """
    weights = Path(weights)
    path = weights.with_name(RECORD_NAME)
    if path.is_dir() or (not path.is_file() and special_file_reason(path) is None):
        return None  # a pipe, a device or a broken link there is refused by the read below
    try:
        raw = json.loads(read_regular_text(path, "training record"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise BadInputError(
            f"{path} (the record of {weights.name}) cannot be read ({error}); fix or remove it"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != RECORD_FORMAT:
        return None  # another tool's model.json: not a record of these weights
    if raw.get("checkpoint") != weights.name:
        return None  # the record of another checkpoint in the same folder
    try:
        return _parse(path, raw)
    except (KeyError, TypeError, ValueError) as error:
        raise BadInputError(
            f"{path} is not a usable sedeploy training record ({type(error).__name__}: {error}); "
            f"re-run sedeploy train, or remove it and give the sizes explicitly"
        ) from None


def _parse(path: Path, raw: dict[str, Any]) -> TrainingRecord:
    channels, height, width = (int(value) for value in raw["input_size"])
    if min(channels, height, width) < 1:
        raise ValueError(f"input_size {raw['input_size']} is not positive")
    pre = raw["preprocessing"]
    preprocessing = Preprocessing(
        resize=tuple(int(value) for value in pre["resize"]),
        crop=(int(pre["crop"][0]), int(pre["crop"][1])),
        crop_pct=float(pre["crop_pct"]),
        mean=tuple(float(value) for value in pre["mean"]),
        std=tuple(float(value) for value in pre["std"]),
        interpolation=str(pre["interpolation"]),
    )
    if not all(math.isfinite(value) for value in (*preprocessing.mean, *preprocessing.std)) or not all(
        value > 0 for value in preprocessing.std
    ):
        raise ValueError("preprocessing mean/std are not finite positive numbers")
    labels = _labels(path, raw)
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise TypeError("options is not an object")
    heldout = raw.get("heldout")
    best = raw.get("best")
    accuracy: float | None = None
    source = ""
    if isinstance(heldout, dict) and isinstance(heldout.get("accuracy"), (int, float)):
        accuracy = float(heldout["accuracy"])
        source = f"held-out accuracy on {heldout.get('images', '?')} images in {path.name}"
    elif isinstance(best, dict) and isinstance(best.get("val_accuracy"), (int, float)):
        accuracy = float(best["val_accuracy"])
        source = f"best validation accuracy in {path.name}"
    return TrainingRecord(
        path=path,
        arch=str(raw["arch"]),
        options=dict(options),
        input_size=(channels, height, width),
        preprocessing=preprocessing,
        labels=labels,
        accuracy=accuracy,
        accuracy_source=source,
    )


def _labels(path: Path, raw: dict[str, Any]) -> tuple[str, ...] | None:
    if isinstance(raw.get("labels"), list):
        return tuple(str(label) for label in raw["labels"])
    labels_path = path.with_name(LABELS_NAME)
    if labels_path.is_file() or special_file_reason(labels_path) is not None:
        names = [line.strip() for line in read_regular_text(labels_path, "labels file").splitlines()]
        return tuple(name for name in names if name)
    return None
