"""Property-based fuzzing of every parser that reads outside input: random or damaged input raises one of
sedeploy's own errors (a one-line :class:`~sedeploy.errors.SedeployError`), never another exception or a hang,
and what a parser accepts holds what the next stage relies on (an oracle each property can fail on).

Inputs are both random and mutations of valid ones (a real model's metadata, a real manifest, real PNG and
JPEG bytes), so the fuzzer reaches past the first check. ``deadline`` bounds each example.
``SEDEPLOY_FUZZ_EXAMPLES=2000`` runs a longer session than CI's default of 60 examples per property.
"""

from __future__ import annotations

import io
import json
import math
import os
import string
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from manifests import make_manifest
from PIL import Image

from sedeploy.artifacts.manifest import BuildManifest, manifest_path, read_manifest
from sedeploy.artifacts.metadata import ModelMetadata, load_onnx, metadata_or_none, read_metadata
from sedeploy.backends.tensorrt import (
    BatchProfile,
    engine_compatibility_problem,
    parse_batch_profile,
    resolve_batch_profile,
    version_tuple,
)
from sedeploy.data import load_image
from sedeploy.errors import SedeployError

T = TypeVar("T")
FUZZ = settings(
    max_examples=int(os.environ.get("SEDEPLOY_FUZZ_EXAMPLES", "60")),  # more for a long fuzzing session
    deadline=timedelta(seconds=5),  # generous: the machine is shared; a hang still fails
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
odd_text = st.text(max_size=40) | st.sampled_from(
    ["", "[]", "{}", "null", "1e999", "-1", "[1, 2]", '{"a": 1}', "NaN"]
)


def own_errors_only(call: Callable[[], T]) -> T | None:
    """``call()``'s result, or None when it raised a one-line SedeployError; anything else fails the test."""
    try:
        return call()
    except SedeployError as error:
        assert "\n" not in str(error), f"{type(error).__name__} message is not one line: {error!r}"
        return None


def usable_metadata(metadata: ModelMetadata | None) -> None:
    """What every later stage relies on when the parser accepted the metadata: it must hold, not just parse."""
    if metadata is None:
        return
    channels, height, width = metadata.input_size
    assert min(channels, height, width) >= 1 and metadata.num_classes >= 1 and metadata.max_batch >= 1
    pre = metadata.preprocessing
    assert len(pre.mean) in (1, channels) and len(pre.std) in (1, channels)  # one value serves every channel
    assert all(math.isfinite(value) for value in pre.mean)
    assert all(math.isfinite(value) and value > 0 for value in pre.std)
    assert min(pre.crop) >= 1 and all(size >= 1 for size in pre.resize)
    assert metadata.labels is None or len(metadata.labels) == metadata.num_classes
    assert ModelMetadata.from_props(metadata.to_props()) == metadata  # what is written reads back the same


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_props(trained_digits) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The sedeploy.* metadata strings of a real exported model."""
    return read_metadata(trained_digits.onnx_path).to_props()


# Metadata -------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_metadata_from_props_with_damaged_values(valid_props: dict[str, str], data: st.DataObject) -> None:
    props = dict(valid_props)
    for key in data.draw(st.lists(st.sampled_from(sorted(props)), min_size=1, max_size=4, unique=True)):
        if data.draw(st.booleans()):
            props[key] = data.draw(odd_text)
        else:
            props[key] = json.dumps(data.draw(json_values))
    usable_metadata(own_errors_only(lambda: ModelMetadata.from_props(props, "fuzz")))


@FUZZ
@given(props=st.dictionaries(st.text(max_size=30).map(lambda key: "sedeploy." + key), odd_text, max_size=8))
def test_metadata_from_random_props(props: dict[str, str]) -> None:
    usable_metadata(own_errors_only(lambda: ModelMetadata.from_props(props, "fuzz")))


@FUZZ
@given(data=st.data())
def test_metadata_from_dict_with_damaged_values(valid_props: dict[str, str], data: st.DataObject) -> None:
    values = ModelMetadata.from_props(valid_props).to_dict()
    for key in data.draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=4, unique=True)):
        values[key] = data.draw(json_values)
    usable_metadata(own_errors_only(lambda: ModelMetadata.from_dict(values, "fuzz")))


def _accepted_onnx(path: Path) -> ModelMetadata | None:
    """Read ``path`` as every stage does; what it accepts must be a graph, and its metadata usable."""
    proto = own_errors_only(lambda: load_onnx(path))
    if proto is None:
        return None
    # Most short byte strings (b"" among them) parse as an empty ModelProto: load_onnx must refuse those.
    assert len(proto.graph.node) > 0, f"load_onnx accepted {path.name} without a graph"
    metadata = own_errors_only(lambda: metadata_or_none(proto))
    usable_metadata(metadata)
    return metadata


@FUZZ
@given(blob=st.binary(max_size=2000))
@example(blob=b"")  # valid protobuf: an empty model
@example(blob=b"\x3a\x00")  # valid protobuf: a model with an empty graph
def test_onnx_files_of_random_bytes(scratch: Path, blob: bytes) -> None:
    path = scratch / "random.onnx"
    path.write_bytes(blob)
    _accepted_onnx(path)


@FUZZ
@given(data=st.data())
def test_truncated_and_damaged_onnx(trained_digits, scratch: Path, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    original = trained_digits.onnx_path.read_bytes()
    blob = bytearray(original[: data.draw(st.just(len(original)) | st.integers(0, len(original)))])
    for _ in range(data.draw(st.integers(0, 4))):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path = scratch / "damaged.onnx"
    path.write_bytes(bytes(blob))
    metadata = _accepted_onnx(path)
    if blob == original:  # the fuzzed reader is the real one: an intact file reads back whole
        assert metadata == read_metadata(trained_digits.onnx_path)


# Manifest -------------------------------------------------------------------------------------------------


def _read(scratch: Path, blob: bytes) -> BuildManifest | None:
    artifact = scratch / "model.engine"
    manifest_path(artifact).write_bytes(blob)
    manifest = own_errors_only(lambda: read_manifest(artifact))
    if manifest is not None:  # what the runners use next must hold
        assert isinstance(manifest.device, dict) and isinstance(manifest.artifact_sha256, str)
        assert manifest.engine is None or isinstance(manifest.engine, dict)
        own_errors_only(
            lambda: ModelMetadata.from_dict(manifest.source_metadata) if manifest.source_metadata else None
        )
    return manifest


@FUZZ
@given(blob=st.binary(max_size=500))
def test_manifest_of_random_bytes(scratch: Path, blob: bytes) -> None:
    _read(scratch, blob)


@FUZZ
@given(value=json_values)
def test_manifest_of_random_json(scratch: Path, value: Any) -> None:
    _read(scratch, json.dumps(value).encode())


@FUZZ
@given(data=st.data())
def test_manifest_with_damaged_fields(
    valid_props: dict[str, str], scratch: Path, data: st.DataObject
) -> None:
    valid = make_manifest(
        "model.engine",
        kind="engine",
        precision="int8",
        source_onnx_sha256="1" * 64,
        source_metadata=ModelMetadata.from_props(valid_props).to_dict(),
    ).to_dict()
    for key in data.draw(st.lists(st.sampled_from(sorted(valid)), min_size=1, max_size=3, unique=True)):
        if data.draw(st.booleans()):
            valid[key] = data.draw(json_values)
        else:
            del valid[key]
    _read(scratch, json.dumps(valid).encode())


versions = (
    st.sampled_from(["10.3.0", "10.3.0.26", "10.3", "²", "10.٣.0", ""]) | st.text(max_size=12) | json_values
)


@FUZZ
@given(
    engine=st.fixed_dictionaries(
        {},
        optional={
            "tensorrt_version": versions,
            "version_compat": json_values,
            "hardware_compat": json_values,
            "profile": json_values,
        },
    ),
    device=st.fixed_dictionaries(
        {}, optional={"compute_capability": st.sampled_from(["8.6", "7.5", [8, 6], "8.6.1"]) | json_values}
    ),
    running=versions.filter(lambda value: isinstance(value, str)),
)
# Engines that do run here, so every run reaches the "compatible" answer and the checks below it.
@example(engine={"tensorrt_version": "10.3.0"}, device={"compute_capability": "8.6"}, running="10.3.0.26")
@example(
    engine={"tensorrt_version": "10.3", "version_compat": True},
    device={"compute_capability": [8, 6]},
    running="10.4.1",
)
@example(engine={"tensorrt_version": "10.3.0", "hardware_compat": 1}, device={}, running="10.3.0")
# A damaged capability is refused in one line, not taken for "compatible" (own_errors_only's None was both).
@example(engine={"tensorrt_version": "10.3.0"}, device={"compute_capability": "8.6.1"}, running="10.3.0")
def test_engine_compatibility_check_on_damaged_manifest_sections(
    engine: dict[str, Any], device: dict[str, Any], running: str
) -> None:
    """The TensorRT runner's version/GPU check reads these manifest sections before any GPU work.

    Damaged sections give a one-line error or an answer; an engine called compatible must really be
    bound to this TensorRT major and this GPU: the next major release, or a pre-Ampere GPU (7.5), refuses it.
    """

    def problem_on(tensorrt_version: str, compute_capability: str) -> str | None:
        return engine_compatibility_problem(
            engine, device, tensorrt_version=tensorrt_version, compute_capability=compute_capability
        )

    try:
        problem = problem_on(running, "8.6")
    except SedeployError as error:  # a damaged section: one line, and no "compatible" answer to check further
        assert "\n" not in str(error), f"{type(error).__name__} message is not one line: {error!r}"
        return
    if problem is None:
        built = version_tuple(str(engine["tensorrt_version"]))
        assert problem_on(f"{built[0] + 1}.0.0", "8.6") is not None, "a TensorRT plan ran on the next major"
        assert problem_on(running, "7.5") is not None, "a plan ran on a GPU it was not built for"


@pytest.fixture(scope="module")
def built_artifact(trained_digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A real FP32 ONNX Runtime build (artifact + manifest) of the digits model."""
    from sedeploy.build import BuildOptions, build_engine

    model = tmp_path_factory.mktemp("fuzz-build") / "digits.onnx"
    model.write_bytes(trained_digits.onnx_path.read_bytes())
    return build_engine(model, BuildOptions(precision="fp32", backend="onnxruntime")).artifact


@pytest.fixture(scope="module")
def clean_run(built_artifact: Path, trained_digits) -> tuple[ModelMetadata | None, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """The built artifact's runner with its manifest intact: its metadata, some images and their logits."""
    import sedeploy

    images = trained_digits.test_images[:4]
    with sedeploy.load(built_artifact, device="cpu") as runner:
        return runner.metadata, images, runner(images)


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 25))  # each example opens an ONNX Runtime session
@given(data=st.data())
def test_runner_with_a_damaged_manifest_beside_a_real_artifact(
    built_artifact: Path, clean_run: tuple[ModelMetadata | None, np.ndarray, np.ndarray], data: st.DataObject
) -> None:
    """The manifest still hashes right (verify passes), but what the runner reads from it is garbage.

    The garbage is refused in one line, or ignored: a runner that opens is the clean one (the ONNX file's own
    metadata wins over the manifest's copy; the same logits).
    """
    import sedeploy

    metadata, images, logits = clean_run
    path = manifest_path(built_artifact)
    original = path.read_text()
    manifest = json.loads(original)
    section = data.draw(st.sampled_from(["device", "device", "source_metadata", "engine", "build_options"]))
    target = manifest[section] if isinstance(manifest[section], dict) else {}
    known = sorted({*target, "providers", "optimization_level"} if section == "device" else target or {"x"})
    for key in data.draw(st.lists(st.sampled_from(known), min_size=1, max_size=3)):
        target[key] = data.draw(json_values | st.lists(st.text(max_size=30), max_size=3))
    manifest[section] = target
    try:
        path.write_text(json.dumps(manifest))
        runner = own_errors_only(lambda: sedeploy.load(built_artifact, device="cpu"))
        if runner is not None:
            with runner:
                assert runner.metadata == metadata
                np.testing.assert_allclose(runner(images), logits, rtol=1e-5, atol=1e-5)
    finally:
        path.write_text(original)


def test_deeply_nested_manifest_is_a_manifest_error(scratch: Path) -> None:
    assert _read(scratch, b"[" * 100_000 + b"]" * 100_000) is None


# TensorRT batch profile (the --batch option) --------------------------------------------------------------


@FUZZ
@given(
    text=st.text(alphabet=string.digits + ":- +_x\n\t٣", max_size=20) | st.text(max_size=20),
    max_batch=st.none() | st.integers(-5, 10**6),
)
def test_batch_profile_parser(text: str, max_batch: int | None) -> None:
    profile = own_errors_only(lambda: parse_batch_profile(text))
    if profile is not None:
        assert isinstance(profile, BatchProfile) and 1 <= profile.min <= profile.opt <= profile.max
    resolved = own_errors_only(lambda: resolve_batch_profile(text, max_batch))
    if resolved is not None and max_batch is not None:
        assert resolved.max <= max_batch


# Image loader ---------------------------------------------------------------------------------------------


def _encoded(kind: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


REAL_IMAGES = {kind: _encoded(kind) for kind in ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")}


@FUZZ
@given(blob=st.binary(max_size=3000), channels=st.sampled_from([1, 3]))
def test_image_of_random_bytes(scratch: Path, blob: bytes, channels: int) -> None:
    path = scratch / "random.png"
    path.write_bytes(blob)
    image = own_errors_only(lambda: load_image(path, channels))
    if image is not None:  # an accepted file is a decoded picture in the model's channels
        assert image.mode == ("L" if channels == 1 else "RGB") and min(image.size) >= 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's own notes on the damaged TIFFs it reads
@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(REAL_IMAGES)), channels=st.sampled_from([1, 3]))
def test_truncated_and_damaged_real_images(
    scratch: Path, data: st.DataObject, kind: str, channels: int
) -> None:
    original = REAL_IMAGES[kind]
    blob = bytearray(original[: data.draw(st.integers(0, len(original)))])
    for _ in range(data.draw(st.integers(0, 3))):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path = scratch / f"damaged.{kind.lower()}"
    path.write_bytes(bytes(blob))
    image = own_errors_only(lambda: load_image(path, channels, max_pixels=10**6))
    if image is not None:
        assert image.mode == ("L" if channels == 1 else "RGB")


def test_a_real_image_still_loads(scratch: Path) -> None:
    """The fuzzed loader is the real one: undamaged bytes decode to the right size."""
    for kind, blob in REAL_IMAGES.items():
        path = scratch / f"intact.{kind.lower()}"
        path.write_bytes(blob)
        assert load_image(path, 3).size == (32, 24)
