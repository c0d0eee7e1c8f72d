"""Atomic writes keep the usual permissions and survive interruptions; reads take regular files only, never
blocking; an output that is an input is refused."""

from __future__ import annotations

import faulthandler
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from bad_inputs_cases import special_files
from manifests import make_manifest

from sedeploy import create_model, files
from sedeploy.artifacts.manifest import ManifestError, checked_manifest, manifest_path, write_manifest
from sedeploy.artifacts.metadata import load_onnx
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import (
    MAX_ONNX_BYTES,
    FileTooLargeError,
    NotRegularFileError,
    atomic_output,
    open_regular,
    read_regular_text,
    refuse_output_over_input,
    sha256_of_file,
    special_file_reason,
)
from sedeploy.models.checkpoint import read_checkpoint, save_checkpoint
from sedeploy.models.record import find_training_record
from sedeploy.precision.calibration import CalibrationRanges


def _usual_mode(tmp_path: Path) -> int:
    probe = tmp_path / "probe"
    probe.write_text("x")
    return probe.stat().st_mode & 0o777


def test_a_writer_that_recreates_the_file_still_leaves_the_usual_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as temp:
        temp.unlink()
        fd = os.open(temp, os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors' writer does
        os.close(fd)
    assert target.stat().st_mode & 0o777 == _usual_mode(tmp_path)


def test_a_saved_checkpoint_is_readable_like_any_other_file(tmp_path: Path) -> None:
    model = create_model("se_resnet18", num_classes=3, img_size=32)
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    assert Path(path).stat().st_mode & 0o777 == _usual_mode(tmp_path)


# Interruptions: Python raises a signal's exception between any two bytecodes of the main thread, so a
# Ctrl-C can land after a temporary file is made and before the code that removes it. These tests put a
# real SIGINT exactly there, in a fresh interpreter (signal_scenarios.py says why not in this one).


def _temps(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What each scenario of ``signal_scenarios.py`` left behind, run once in a subprocess."""
    root = tmp_path_factory.mktemp("signals")
    script = Path(__file__).with_name("signal_scenarios.py")
    result = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    outcomes: dict[str, Any] = json.loads(result.stdout)
    return outcomes


def test_a_signal_inside_a_deferred_block_is_raised_when_the_block_ends(interrupted: dict[str, Any]) -> None:
    outcome = interrupted["deferred"]
    assert outcome["raised"] == "KeyboardInterrupt"
    assert outcome["steps"] == ["after the signal"]  # the block finished; what follows it did not run
    assert outcome["handler_restored"]


def test_check_writable_interrupted_mid_way_leaves_no_temporary_file(interrupted: dict[str, Any]) -> None:
    assert interrupted["check_writable"] == {"raised": "KeyboardInterrupt", "temps": []}


def test_atomic_output_interrupted_as_its_file_is_made_leaves_nothing(interrupted: dict[str, Any]) -> None:
    assert interrupted["atomic_output"] == {"raised": "KeyboardInterrupt", "temps": [], "target": "earlier\n"}


def test_commit_files_finishes_every_rename_before_the_interruption(interrupted: dict[str, Any]) -> None:
    assert interrupted["commit"] == {"raised": "KeyboardInterrupt", "temps": [], "contents": ["new", "new"]}


def test_a_temporary_file_orphaned_by_an_interruption_is_removed_at_exit(tmp_path: Path) -> None:
    """The caller made the file and was interrupted before its own ``try``: the process's exit removes it."""
    script = (
        "import sys; from pathlib import Path; from sedeploy.files import temp_path_beside\n"
        "temp = temp_path_beside(Path(sys.argv[1]) / 'model.int8.onnx')\n"
        "print(temp.name, flush=True)\n"
        "raise KeyboardInterrupt\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr
    assert result.stdout.strip().endswith(".tmp")  # it was made ...
    assert _temps(tmp_path) == []  # ... and is gone


# Reading what a user names: regular files only (issue 35). Each special file is real: a FIFO, a bound Unix
# socket, links to /dev/zero and /dev/urandom. A regression here blocks or reads forever, so the module arms
# faulthandler's watchdog: a hang ends the run with every thread's stack instead of stalling CI.


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_special_files_are_named_without_being_opened(tmp_path: Path) -> None:
    made = special_files(tmp_path)
    reasons = {name: special_file_reason(path) for name, path in made.items()}
    assert reasons["pipe.png"] == "a named pipe"
    assert reasons["socket.png"] == "a socket"
    assert reasons["zero.png"] == "a link to /dev/zero, a character device"
    assert reasons["random.jpg"] == "a link to /dev/urandom, a character device"
    assert reasons["null.png"] == "a link to /dev/null, a character device"
    assert reasons["gone.png"] == "a broken link to nowhere.png"
    (tmp_path / "real.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to("real.png")
    assert special_file_reason(tmp_path / "real.png") is None
    assert special_file_reason(tmp_path / "link.png") is None  # a link to a regular file is that file
    assert special_file_reason(tmp_path / "missing.png") is None  # its reader words a missing file
    assert special_file_reason(tmp_path) == "a folder"


@pytest.mark.parametrize("name", ["pipe.png", "socket.png", "zero.png", "random.jpg", "null.png", "gone.png"])
def test_open_regular_refuses_each_special_file_at_once(tmp_path: Path, name: str) -> None:
    path = special_files(tmp_path)[name]
    started = time.monotonic()
    with pytest.raises(NotRegularFileError, match=r"weights file .* not a regular file; give a regular file"):
        open_regular(path, "weights file")
    with pytest.raises(NotRegularFileError):
        sha256_of_file(path)
    with pytest.raises(NotRegularFileError):
        read_regular_text(path, "manifest")
    assert time.monotonic() - started < 5


def test_a_file_swapped_for_a_pipe_after_the_look_is_refused_on_the_open_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look (stat) and the open are two steps: a pipe put there in between is refused, not waited on."""
    pipe = special_files(tmp_path)["pipe.png"]
    monkeypatch.setattr(files, "special_file_reason", lambda path: None)  # the look saw a regular file
    with pytest.raises(NotRegularFileError, match="a named pipe, not a regular file"):
        open_regular(pipe, "image")


def test_sizes_past_the_limit_are_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(b"[" + b" " * 100 + b"]")
    assert read_regular_text(path, "manifest", max_bytes=102) == "[" + " " * 100 + "]"
    with pytest.raises(FileTooLargeError, match=r"manifest .* is 102 bytes, more than the 101"):
        read_regular_text(path, "manifest", max_bytes=101)
    with open_regular(path) as handle:
        assert handle.read() == path.read_bytes()  # blocking mode restored: an ordinary reader


def _same_file_cases(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    source = tmp_path / "m.onnx"
    source.write_bytes(b"source model, must survive")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.onnx").symlink_to("m.onnx")
    os.link(source, tmp_path / "hard.onnx")
    return {
        "same path": (source, source),
        "./": (source, Path(os.path.relpath(source)).parent / "." / "m.onnx"),
        "..": (source, tmp_path / "sub" / ".." / "m.onnx"),
        "a link": (source, tmp_path / "link.onnx"),
        "a hard link": (source, tmp_path / "hard.onnx"),
    }


@pytest.mark.parametrize("how", ["same path", "./", "..", "a link", "a hard link"])
def test_an_output_that_is_an_input_is_refused_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.chdir(tmp_path)
    source, output = _same_file_cases(tmp_path)[how]
    with pytest.raises(ConfigError) as raised:
        refuse_output_over_input([("output", output)], [("the source model", source)])
    message = str(raised.value)
    assert f"output {output} is the source model {source} (the same file)" in message
    assert "\n" not in message and raised.value.params == ("output",) and raised.value.exit_code == 2
    assert source.read_bytes() == b"source model, must survive"


def test_two_outputs_that_are_one_file_are_refused_and_distinct_paths_pass(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(b"x")
    refuse_output_over_input(
        [("output", tmp_path / "m.ort.onnx"), ("json_out", tmp_path / "report.json"), ("markdown", None)],
        [("the source model", source), ("the reference", None)],
    )
    with pytest.raises(ConfigError, match=r"json_out .*r\.json and markdown .*r\.json are the same file"):
        refuse_output_over_input(
            [("json_out", tmp_path / "r.json"), ("markdown", tmp_path / "sub" / ".." / "r.json")]
        )


# Every reader of a user path goes through the gate: manifests, training records, weights, ONNX, caches.


def test_a_pipe_at_a_manifest_path_is_refused_not_taken_for_no_manifest(tmp_path: Path) -> None:
    artifact = tmp_path / "model.ort.onnx"
    artifact.write_bytes(b"artifact")
    assert checked_manifest(artifact) is None  # no manifest: an artifact sedeploy did not build
    os.mkfifo(manifest_path(artifact))
    with pytest.raises(
        ManifestError, match=r"model.ort.onnx.manifest.json is a named pipe, not a regular file"
    ):
        checked_manifest(artifact)
    manifest_path(artifact).unlink()
    write_manifest(make_manifest(artifact), artifact)
    manifest = checked_manifest(artifact, required=True)  # BuildManifest, not Optional (typing.overload)
    assert manifest.artifact == artifact.name


def test_a_pipe_at_a_training_record_path_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    assert find_training_record(weights) is None
    os.mkfifo(tmp_path / "model.json")
    with pytest.raises(BadInputError, match=r"training record .*model.json is a named pipe"):
        find_training_record(weights)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_weights_linked_to_a_device_are_refused_at_once(tmp_path: Path, device: str) -> None:
    (tmp_path / "w.pt").symlink_to(device)
    with pytest.raises(
        BadInputError, match=rf"weights file .*w.pt is a link to {device}, a character device"
    ):
        read_checkpoint(tmp_path / "w.pt")


def test_a_checkpoint_read_through_its_open_descriptor_matches_the_file(tmp_path: Path) -> None:
    """safetensors reads ``/proc/self/fd/N`` (the file already opened and checked), torch the open handle."""
    model = create_model("se_resnet18", num_classes=3, img_size=32)
    for path in (save_checkpoint(model, tmp_path / "m.safetensors"), tmp_path / "m.pt"):
        if path.suffix == ".pt":
            torch.save(model.state_dict(), path)
        checkpoint = read_checkpoint(path)
        assert checkpoint.sha256 == sha256_of_file(path)
        assert checkpoint.state_dict.keys() == model.state_dict().keys()


def test_an_onnx_file_past_protobufs_2_gib_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as handle:
        handle.truncate(MAX_ONNX_BYTES + 1)  # sparse: no disk used, and reading it would take minutes
    started = time.monotonic()
    with pytest.raises(FileTooLargeError, match=r"ONNX file .*huge.onnx is 2147483649 bytes, more than"):
        load_onnx(path)
    assert time.monotonic() - started < 5


def test_a_calibration_cache_that_is_a_pipe_is_refused_a_corrupt_one_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "model.calibration.minmax.symmetric.json"
    os.mkfifo(cache)
    with pytest.raises(NotRegularFileError, match=r"calibration cache .* is a named pipe"):
        CalibrationRanges.read(cache)
    cache.unlink()
    cache.write_text("{not json", encoding="utf-8")
    assert CalibrationRanges.read(cache) is None  # a corrupt cache is rebuilt (and replaced) as before
    assert CalibrationRanges.read(tmp_path / "missing.json") is None
