"""The metadata written into ONNX files reads back equal, and bad metadata fails clearly."""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest
from onnx import TensorProto, helper

from sedeploy.artifacts.metadata import (
    PREFIX,
    ModelMetadata,
    Preprocessing,
    channel_order_for,
    read_labels,
    read_metadata,
    write_metadata,
)
from sedeploy.errors import BadInputError
from sedeploy.models.registry import ModelDefaults


def _tiny_model() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["input"], ["logits"])
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="author", value="someone else")
    return model


def _full_metadata() -> ModelMetadata:
    defaults = ModelDefaults().for_options(in_chans=1, num_classes=4, img_size=(473, 473))
    return ModelMetadata(
        arch="se_resnet18",
        options={"in_chans": 1, "num_classes": 4, "reduction": 8, "se_bias": False},
        input_size=(1, 473, 473),
        num_classes=4,
        preprocessing=Preprocessing.from_defaults(defaults),
        params=11_180_000,
        macs=5_123_456_789,
        opset=18,
        max_batch=16,
        sedeploy_version="0.1.0",
        channel_order="GRAY",
        labels=("chair", "stool", "sofa", "bench, park"),
        weights_sha256="ab" * 32,
        weights_layout="timm",
    )


def test_round_trip_through_a_file_keeps_every_field(tmp_path):
    written = _full_metadata()
    model = _tiny_model()
    write_metadata(model, written)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)

    read = read_metadata(path)

    assert read == written
    for field in dataclasses.fields(ModelMetadata):
        assert getattr(read, field.name) == getattr(written, field.name), field.name
    assert read.grayscale and read.in_chans == 1
    assert read_metadata(onnx.load(path)) == written
    assert {p.key: p.value for p in onnx.load(path).metadata_props}["author"] == "someone else"


def test_optional_fields_absent_round_trip_as_none(tmp_path):
    written = dataclasses.replace(_full_metadata(), labels=None, weights_sha256=None, weights_layout=None)
    model = _tiny_model()
    write_metadata(model, written)

    assert read_metadata(model) == written
    keys = {entry.key for entry in model.metadata_props}
    assert f"{PREFIX}labels" not in keys and f"{PREFIX}weights_sha256" not in keys


def test_keys_are_prefixed_and_plain_strings():
    props = _full_metadata().to_props()

    assert all(key.startswith(PREFIX) for key in props)
    assert props[f"{PREFIX}arch"] == "se_resnet18"
    assert props[f"{PREFIX}input_layout"] == "NCHW"
    assert json.loads(props[f"{PREFIX}input_size"]) == [1, 473, 473]
    assert json.loads(props[f"{PREFIX}preprocessing"])["resize"] == [540]


def test_rewriting_replaces_the_previous_sedeploy_entries():
    model = _tiny_model()
    write_metadata(model, _full_metadata())
    write_metadata(model, dataclasses.replace(_full_metadata(), max_batch=1, labels=None))

    keys = [entry.key for entry in model.metadata_props]
    assert len(keys) == len(set(keys))
    read = read_metadata(model)
    assert read.max_batch == 1 and read.labels is None


def test_preprocessing_follows_timms_eval_transform():
    square = Preprocessing.from_defaults(ModelDefaults())
    assert square.resize == (256,) and square.crop == (224, 224)
    assert square.mean == (0.485, 0.456, 0.406) and square.interpolation == "bilinear"

    wide = Preprocessing.from_defaults(ModelDefaults().for_options(3, 10, (224, 320)))
    assert wide.resize == (256, 365) and wide.crop == (224, 320)


def test_channel_order():
    assert channel_order_for(1) == "GRAY"
    assert channel_order_for(3) == "RGB"
    assert channel_order_for(4) == "unknown"


def test_file_without_sedeploy_metadata_is_refused(tmp_path):
    path = tmp_path / "foreign.onnx"
    onnx.save(_tiny_model(), path)

    with pytest.raises(BadInputError, match="no sedeploy metadata"):
        read_metadata(path)


def test_newer_or_corrupt_metadata_is_refused():
    model = _tiny_model()
    write_metadata(model, _full_metadata())
    props = {entry.key: entry.value for entry in model.metadata_props}

    with pytest.raises(BadInputError, match="upgrade sedeploy"):
        ModelMetadata.from_props({**props, f"{PREFIX}metadata_version": "99"})
    with pytest.raises(BadInputError, match="incomplete or corrupt"):
        ModelMetadata.from_props({k: v for k, v in props.items() if k != f"{PREFIX}macs"})
    with pytest.raises(BadInputError, match="incomplete or corrupt"):
        ModelMetadata.from_props({**props, f"{PREFIX}input_size": "[1, 473]"})


def test_missing_or_unreadable_onnx_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        read_metadata(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00not protobuf" * 10)
    with pytest.raises(BadInputError, match="not a readable ONNX file"):
        read_metadata(garbage)


def test_labels_files(tmp_path):
    lines = tmp_path / "labels.txt"
    lines.write_text("chair\n\n stool \nsofa\n", encoding="utf-8")
    listed = tmp_path / "labels.json"
    listed.write_text(json.dumps(["a, b", "c"]), encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]", encoding="utf-8")

    assert read_labels(lines) == ("chair", "stool", "sofa")
    assert read_labels(listed) == ("a, b", "c")
    with pytest.raises(BadInputError, match="JSON list of strings"):
        read_labels(bad)
