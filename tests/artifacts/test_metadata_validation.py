"""Metadata that no later stage could use is refused when it is read, in one line naming the key."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sedeploy.artifacts.metadata import MAX_SIDE, PREFIX, ModelMetadata, Preprocessing
from sedeploy.errors import BadInputError


def _good() -> ModelMetadata:
    return ModelMetadata(
        arch="se_resnet18",
        options={"num_classes": 3},
        input_size=(3, 224, 224),
        num_classes=3,
        preprocessing=Preprocessing(
            (256,), (224, 224), 0.875, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear"
        ),
        params=11_000_000,
        macs=1_800_000_000,
        opset=18,
        max_batch=8,
        sedeploy_version="0.1.0",
        labels=("cat", "dog", "bird"),
    )


def _props_with(key: str, change: Callable[[Any], Any]) -> dict[str, str]:
    """The good record's props with one JSON value changed (``preprocessing.<field>`` reaches inside it)."""
    props = _good().to_props()
    top, _, field = key.partition(".")
    value = json.loads(props[PREFIX + top])
    if field:
        value[field] = change(value[field])
    else:
        value = change(value)
    props[PREFIX + top] = json.dumps(value)
    return props


CASES = {
    "nan-mean": ("preprocessing.mean", lambda v: [float("nan"), *v[1:]], "preprocessing mean", "NaN"),
    "infinite-mean": ("preprocessing.mean", lambda v: [float("inf")] * 3, "preprocessing mean", "infinity"),
    "zero-std": ("preprocessing.std", lambda v: [v[0], 0.0, v[2]], "preprocessing std", "positive"),
    "negative-std": ("preprocessing.std", lambda v: [-x for x in v], "preprocessing std", "positive"),
    "nan-std": ("preprocessing.std", lambda v: [float("nan")] * 3, "preprocessing std", "NaN"),
    "mean-count": ("preprocessing.mean", lambda v: [0.5, 0.5], "preprocessing mean", "2 values for 3"),
    "zero-crop": ("preprocessing.crop", lambda v: [0, 224], "preprocessing crop", "from 1 to"),
    "huge-crop": ("preprocessing.crop", lambda v: [224, MAX_SIDE + 1], "preprocessing crop", "from 1 to"),
    "negative-resize": ("preprocessing.resize", lambda v: [-256], "preprocessing resize", "from 1 to"),
    "three-resize": ("preprocessing.resize", lambda v: [1, 2, 3], "preprocessing resize", "3 value(s)"),
    "crop-pct-zero": ("preprocessing.crop_pct", lambda v: 0.0, "preprocessing crop_pct", "(0, 1]"),
    "crop-pct-nan": ("preprocessing.crop_pct", lambda v: float("nan"), "preprocessing crop_pct", "(0, 1]"),
    "zero-input-size": ("input_size", lambda v: [3, 0, 224], "input_size", "from 1 to"),
    "huge-input-size": ("input_size", lambda v: [3, 100_000, 224], "input_size", "from 1 to"),
    "labels-count": ("labels", lambda v: v[:2], "labels", "holds 2 names but sedeploy.num_classes is 3"),
    "zero-classes": ("num_classes", lambda v: 0, "num_classes", "at least 1"),
    "zero-max-batch": ("max_batch", lambda v: 0, "max_batch", "at least 1"),
    "negative-macs": ("macs", lambda v: -1, "macs", "negative"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_unusable_metadata_is_refused_naming_the_key(case: str) -> None:
    key, change, named, reason = CASES[case]
    with pytest.raises(BadInputError) as raised:
        ModelMetadata.from_props(_props_with(key, change), "model.onnx")
    message = str(raised.value)
    assert message.startswith("model.onnx has unusable sedeploy metadata: ")
    assert PREFIX + named in message and reason in message and "\n" not in message
    assert message.endswith("export it again")


def test_the_good_record_and_its_manifest_form_read_back() -> None:
    good = _good()
    assert ModelMetadata.from_props(good.to_props()) == good
    assert ModelMetadata.from_dict(good.to_dict()) == good


def test_a_manifest_record_is_checked_like_the_onnx_keys() -> None:
    data = _good().to_dict()
    data["preprocessing"]["std"] = [0.0, 0.0, 0.0]
    with pytest.raises(
        BadInputError, match=r"the manifest has unusable sedeploy metadata: sedeploy\.preprocessing std"
    ):
        ModelMetadata.from_dict(data)


@pytest.mark.parametrize(
    ("key", "value"),
    [("input_size", "[3, 1e400, 3]"), ("options", "[1, 2]"), ("labels", '"abc"'), ("input_size", "[" * 5000)],
    ids=["overflowing-size", "options-not-object", "labels-not-list", "deeply-nested"],
)
def test_values_of_the_wrong_shape_are_corrupt_metadata_not_a_crash(key: str, value: str) -> None:
    props = _good().to_props()
    props[PREFIX + key] = value
    with pytest.raises(BadInputError, match="incomplete or corrupt sedeploy metadata"):
        ModelMetadata.from_props(props)


def test_single_mean_and_std_values_apply_to_every_channel() -> None:
    props = _props_with("preprocessing.mean", lambda v: [0.5])
    props[PREFIX + "preprocessing"] = json.dumps(
        {**json.loads(props[PREFIX + "preprocessing"]), "std": [0.25]}
    )
    assert ModelMetadata.from_props(props).preprocessing.std == (0.25,)
