"""ONNX external data: a legitimate side file works through build, verify, predict and Triton; hostile ones are refused.

The legitimate model is a real export re-saved the way ONNX documents it
(``onnx.save_model(..., save_as_external_data=True, location="model.onnx.data")``);
the hostile ones are the same model with one tensor's location or byte range edited.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto
from tiny_models import export_tiny

from sedeploy.artifacts.external_data import (
    check_external_data,
    external_data_files,
    inline_external_data,
)
from sedeploy.artifacts.manifest import read_manifest
from sedeploy.artifacts.metadata import load_onnx
from sedeploy.backends.onnxruntime import create_session
from sedeploy.cli import cli
from sedeploy.errors import BadInputError
from sedeploy.serving.triton import check_repository, write_repository

DATA = "model.onnx.data"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("external_source")
    return export_tiny(folder / "model.onnx")


def _with_external_data(source: Path, folder: Path, location: str = DATA) -> Path:
    """``source`` re-saved into ``folder`` with every tensor of 64 bytes or more in one side file."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    model = onnx.load(str(source))
    onnx.save_model(model, str(target), save_as_external_data=True, location=location, size_threshold=64)
    return target


@pytest.fixture
def external(exported: Path, tmp_path: Path) -> Path:
    return _with_external_data(exported, tmp_path / "model")


def _largest_external(model: onnx.ModelProto) -> TensorProto:
    tensors = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    return max(tensors, key=lambda t: int(next(e.value for e in t.external_data if e.key == "length")))


def _edited(path: Path, edit: Callable[[TensorProto], None]) -> str:
    """Apply ``edit`` to the external entries of the largest external tensor of the model at ``path``, in place.

    Returns that tensor's name.
    """
    model = onnx.load(str(path), load_external_data=False)
    tensor = _largest_external(model)
    edit(tensor)
    onnx.save_model(model, str(path))
    return tensor.name


def _set(key: str, value: str) -> Callable[[TensorProto], None]:
    def edit(tensor: TensorProto) -> None:
        entries = [e for e in tensor.external_data if e.key == key]
        if entries:
            entries[0].value = value
        else:
            tensor.external_data.add(key=key, value=value)

    return edit


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout + result.stderr


def _logits(path: Path, batch: np.ndarray) -> np.ndarray:
    session = create_session(path, ["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": batch})[0])


def test_the_fixture_really_keeps_its_weights_beside_it(external: Path, exported: Path) -> None:
    model = onnx.load(str(external), load_external_data=False)
    assert external_data_files(model, external) == (DATA,)
    assert (external.parent / DATA).stat().st_size > exported.stat().st_size / 2
    assert len(check_external_data(model, external)) >= 5


def test_legitimate_external_data_builds_verifies_and_goes_into_triton_with_its_data(
    external: Path, exported: Path, tmp_path: Path
) -> None:
    batch = np.random.default_rng(0).standard_normal((2, 3, 16, 16), dtype=np.float32)
    expected = _logits(exported, batch)
    np.testing.assert_allclose(_logits(external, batch), expected, rtol=1e-5, atol=1e-5)

    code, output = _invoke("build-engine", str(external), "--backend", "onnxruntime")
    assert code == 0, output
    optimized = external.with_name("model.ort.onnx")
    assert read_manifest(optimized).artifact == optimized.name
    # ONNX Runtime saved the unchanged weights as references to model.onnx.data; the build inlined them.
    assert check_external_data(onnx.load(str(optimized), load_external_data=False), optimized) == ()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for path in (optimized, optimized.with_name(optimized.name + ".manifest.json")):
        shutil.copy(path, moved / path.name)
    np.testing.assert_allclose(_logits(moved / optimized.name, batch), expected, rtol=1e-4, atol=1e-4)

    code, output = _invoke("verify", str(optimized))
    assert code == 0, output
    assert "model.onnx" in output

    code, output = _invoke("build-engine", str(external), "--fp16", "--backend", "onnxruntime")
    assert code == 0, output
    fp16 = external.with_name("model.fp16.onnx")
    assert check_external_data(onnx.load(str(fp16), load_external_data=False), fp16) == ()
    code, output = _invoke("verify", str(fp16))
    assert code == 0, output

    repository = tmp_path / "repo"
    code, output = _invoke("triton", str(external), "-o", str(repository), "--kind", "cpu")
    assert code == 0, output
    version = repository / "se_preact_resnet" / "1"
    assert sorted(path.name for path in version.iterdir()) == ["model.onnx", DATA]
    assert (version / DATA).read_bytes() == (external.parent / DATA).read_bytes()
    np.testing.assert_allclose(_logits(version / "model.onnx", batch), expected, rtol=1e-5, atol=1e-5)
    code, output = _invoke("triton", "--check", str(repository))
    assert code == 0, output

    # The checker looks at the data too: without it the repository is not ok.
    (version / DATA).unlink()
    check = check_repository(repository)
    assert not check.ok
    assert "does not exist beside the model" in check.models[0].problems[0]


def test_external_data_in_a_sub_folder_is_copied_to_the_same_place(exported: Path, tmp_path: Path) -> None:
    external = _with_external_data(exported, tmp_path / "model")
    (external.parent / "weights").mkdir()
    os.replace(external.parent / DATA, external.parent / "weights" / "data.bin")
    model = onnx.load(str(external), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "weights/../weights/data.bin"
    onnx.save_model(model, str(external))
    result = write_repository([external], tmp_path / "repo", options=None)
    version = result.models[0].folder / "1"
    assert (version / "weights" / "data.bin").read_bytes() == (
        external.parent / "weights/data.bin"
    ).read_bytes()
    assert check_repository(tmp_path / "repo").ok


def _hostile_cases(folder: Path) -> dict[str, tuple[Callable[[TensorProto], None], str]]:
    outside = folder.parent / "outside.bin"
    outside.write_bytes(b"\0" * (1 << 16))
    (folder / "escape").symlink_to(outside)
    (folder / "sub").mkdir()
    return {
        "absolute": (_set("location", "/etc/passwd"), "an absolute path"),
        "climbs-out": (_set("location", "../outside.bin"), "climbs out of the model's folder"),
        "link-out": (_set("location", "escape"), "outside the model's folder"),
        "missing": (_set("location", "gone.bin"), "does not exist beside the model"),
        "folder": (_set("location", "sub"), "is not a regular file"),
        "ort-memory": (_set("location", "*/_ORT_MEM_ADDR_/*"), "process memory"),
        "past-end": (_set("offset", str(1 << 30)), "past its end"),
        "wrong-length": (_set("length", "4"), "for a tensor of"),
        "negative-offset": (_set("offset", "-8"), "negative"),
        "not-a-number": (_set("offset", "0x10"), "not a number"),
        "unknown-key": (_set("url", "http://example.com/w"), "unknown key 'url'"),
        "twice": (lambda t: t.external_data.add(key="location", value="/etc/passwd"), "given twice"),
        "no-location": (lambda t: _drop(t, "location"), "names no file"),
    }


def _drop(tensor: TensorProto, key: str) -> None:
    kept = [(e.key, e.value) for e in tensor.external_data if e.key != key]
    del tensor.external_data[:]
    for name, value in kept:
        tensor.external_data.add(key=name, value=value)


def test_every_hostile_location_or_range_is_refused_naming_tensor_and_location(
    exported: Path, tmp_path: Path
) -> None:
    base = _with_external_data(exported, tmp_path / "base")
    cases = _hostile_cases(base.parent)
    for name, (edit, fragment) in cases.items():
        folder = tmp_path / name
        shutil.copytree(base.parent, folder, symlinks=True)
        path = folder / "model.onnx"
        tensor = _edited(path, edit)
        with pytest.raises(BadInputError) as raised:
            load_onnx(path)
        message = str(raised.value)
        assert fragment in message, (name, message)
        assert f"tensor {tensor!r}" in message and "\n" not in message, (name, message)


def test_a_constant_nodes_external_tensor_is_checked_too(tmp_path: Path) -> None:
    """Tensors outside the initializers (a Constant's value) point at files as well."""
    value = onnx.numpy_helper.from_array(np.ones(16, dtype=np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    value.ClearField("raw_data")
    value.external_data.add(key="location", value="/etc/hostname")
    node = onnx.helper.make_node("Constant", [], ["y"], value=value)
    graph = onnx.helper.make_graph(
        [node], "g", [], [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [16])]
    )
    path = tmp_path / "constant.onnx"
    onnx.save_model(onnx.helper.make_model(graph), str(path))
    with pytest.raises(BadInputError, match="tensor 'c' keeps its data in '/etc/hostname'"):
        load_onnx(path)


def test_inlining_refuses_a_hostile_reference_and_leaves_a_self_contained_file_alone(
    external: Path, exported: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.onnx"
    shutil.copy(exported, plain)
    before = plain.read_bytes()
    assert inline_external_data(plain, tmp_path) is False
    assert plain.read_bytes() == before
    _edited(external, _set("location", "/etc/passwd"))
    with pytest.raises(BadInputError, match="absolute path"):
        inline_external_data(external, external.parent)


@pytest.mark.parametrize(
    "command",
    [
        ["build-engine", "{model}", "--backend", "onnxruntime"],
        ["predict", "{model}", "{image}"],
        ["verify", "{model}", "--reference", "se_preact_resnet"],
        ["bench", "{model}", "--iterations", "1", "--batch", "1"],
        ["triton", "{model}", "-o", "{repo}"],
    ],
    ids=lambda command: command[0],
)
def test_every_command_refuses_the_passwd_model_before_a_backend_reads_it(
    command: list[str], external: Path, tmp_path: Path
) -> None:
    from PIL import Image

    _edited(external, _set("location", "/etc/passwd"))
    image = tmp_path / "image.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(image)
    before = sorted(p.name for p in external.parent.iterdir())
    args = [part.format(model=external, image=image, repo=tmp_path / "repo") for part in command]
    code, output = _invoke(*args)
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "'/etc/passwd'" in errors[0] and "absolute path" in errors[0], output
    assert sorted(p.name for p in external.parent.iterdir()) == before
    assert not (tmp_path / "repo").exists()


def test_triton_check_calls_a_passwd_repository_not_ok(external: Path, tmp_path: Path) -> None:
    """A repository someone else laid out, whose model points outside: the checker says so."""
    repository = tmp_path / "repo"
    write_repository([external], repository)
    version = repository / "se_preact_resnet" / "1"
    _edited(version / "model.onnx", _set("location", "../../../outside.bin"))
    check = check_repository(repository)
    assert not check.ok
    assert "climbs out of the model's folder" in check.models[0].problems[0]
    code, output = _invoke("triton", "--check", str(repository))
    assert code == 1, output


def test_a_data_file_named_like_the_copy_is_refused(exported: Path, tmp_path: Path) -> None:
    """Data saved as ``model.onnx`` beside ``other.onnx`` would overwrite the copy in the version folder."""
    folder = tmp_path / "model"
    folder.mkdir()
    source = folder / "other.onnx"
    onnx.save_model(
        onnx.load(str(exported)),
        str(source),
        save_as_external_data=True,
        location="model.onnx",
        size_threshold=64,
    )
    with pytest.raises(BadInputError, match="the name its copy takes"):
        write_repository([source], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_a_link_inside_the_folder_is_followed_and_copied_as_a_file(external: Path, tmp_path: Path) -> None:
    folder = external.parent
    os.replace(folder / DATA, folder / "real.bin")
    (folder / DATA).symlink_to("real.bin")
    assert external_data_files(onnx.load(str(external), load_external_data=False), external) == (DATA,)
    result = write_repository([external], tmp_path / "repo")
    copied = result.models[0].folder / "1" / DATA
    assert not copied.is_symlink() and copied.read_bytes() == (folder / "real.bin").read_bytes()


def test_a_checked_file_is_checked_again_when_its_data_or_its_records_change(
    external: Path, tmp_path: Path
) -> None:
    """``check_onnx_file`` keeps what the model says (parsed once per unchanged file), never the verdict."""
    from sedeploy.artifacts.metadata import check_onnx_file

    check_onnx_file(external)
    data = external.parent / DATA
    outside = tmp_path / "outside.bin"
    os.replace(data, outside)
    data.symlink_to(outside)  # the same bytes, now through a link out of the folder
    with pytest.raises(BadInputError, match="outside the model's folder"):
        check_onnx_file(external)
    data.unlink()
    os.replace(outside, data)
    check_onnx_file(external)
    _edited(external, _set("location", "/etc/passwd"))  # a rewritten model is parsed again
    with pytest.raises(BadInputError, match="absolute path"):
        check_onnx_file(external)
