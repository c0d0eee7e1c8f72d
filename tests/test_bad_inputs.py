"""The bad-input matrix (``tests/bad_inputs_cases.py``) run through the real CLI, plus the inputs it accepts.

Every case must exit non-zero with the expected code (2 for usage, 1 for failure),
print exactly one non-empty line on stderr, starting with ``error:`` and holding the
case's fragment, print nothing on stdout, show no traceback, and leave every file in
its folder as it was (same SHA-256, same mtime, nothing deleted, nothing left over).
Log records (``WARNING name: ...``) from the library are not counted as lines: they
are allowed on stderr besides the error line, since a skipped image is worth a
warning before the final error, but they may not be tracebacks.

Exit 0 cases are *named skips*: the run goes on with what it can read, one warning
holds the fragment, there is no error line and no traceback, and the files it may add
(``Case.creates``) are the only change. Cases with ``within`` must finish in that many
seconds; a watchdog (``faulthandler``) ends the whole run with every thread's stack if
one blocks for good. Cases with ``pending`` wait for a check another module wires: they
run as strict xfails, so the day the check lands they fail until the mark comes off.
"""

from __future__ import annotations

import faulthandler
import fnmatch
import hashlib
import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from bad_inputs_cases import CASES, Assets, Case, markdown_table, png_header_only, readme_table
from click.testing import CliRunner, Result
from PIL import Image

import sedeploy
from sedeploy.backends import cuda_memory
from sedeploy.build import BuildOptions, build_engine
from sedeploy.cli import cli
from sedeploy.data import images_decoded
from sedeploy.export import export_onnx
from sedeploy.models.checkpoint import save_checkpoint

_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING) [\w.]+: ")
Snapshot = dict[str, tuple[str, int]]
"""SHA-256 and mtime (ns) of each file under a folder, by relative path (folders as ``name/``)."""
_TINY = {"depths": (1, 1, 1), "widths": (16, 32, 64), "reduction": 4}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """A tiny exported SE model, its ONNX Runtime artifact, its weights (two formats), another arch's, images."""
    root = tmp_path_factory.mktemp("bad_inputs_assets")
    torch.manual_seed(0)
    model = sedeploy.create_model("se_preact_resnet", num_classes=3, img_size=16, **_TINY)
    weights = save_checkpoint(model, root / "weights.safetensors")
    weights_pt = root / "weights.pt"
    torch.save(model.state_dict(), weights_pt)
    other = sedeploy.create_model(
        "preact_resnet", num_classes=3, img_size=16, depths=(1, 1, 1), widths=(16, 32, 64)
    )
    other_weights = save_checkpoint(other, root / "preact.safetensors")
    onnx_path = export_onnx(
        "se_preact_resnet",
        weights=weights,
        num_classes=3,
        img_size=16,
        max_batch=8,
        output=root / "model.onnx",
    ).path
    ort = build_engine(onnx_path, BuildOptions(backend="onnxruntime")).artifact
    image = root / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    return Assets(onnx_path, ort, weights, weights_pt, other_weights, image, root / "payload-ran")


def snapshot(folder: Path) -> Snapshot:
    """SHA-256 and mtime of every file under ``folder`` (folders as entries too), by relative path.

    Links are recorded by their target and special files (pipes, sockets) by their type and mtime: neither
    is followed or read, which would block or never end.
    """
    files: Snapshot = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        status = path.lstat()
        if stat.S_ISLNK(status.st_mode):
            files[name] = (f"link to {os.readlink(path)}", 0)
        elif stat.S_ISDIR(status.st_mode):
            files[name + "/"] = ("folder", 0)
        elif stat.S_ISREG(status.st_mode):
            files[name] = (hashlib.sha256(path.read_bytes()).hexdigest(), status.st_mtime_ns)
        else:
            files[name] = (f"special file {stat.S_IFMT(status.st_mode):o}", status.st_mtime_ns)
    return files


def _fake_tensorrt(monkeypatch: pytest.MonkeyPatch, version: str, capability: str) -> None:
    """A ``tensorrt`` module and GPU that exist only as far as the manifest check looks (TensorRT cannot exist here)."""
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__=version))
    gpu = cuda_memory.DeviceInfo(0, "NVIDIA H100 80GB HBM3", capability, 80 * 2**30)
    monkeypatch.setattr(cuda_memory, "device_info", lambda index=0: gpu)


def run_case(
    case: Case, assets: Assets, folder: Path, monkeypatch: pytest.MonkeyPatch, verbose: bool = False
) -> tuple[Result, Snapshot, Snapshot]:
    """Build the case's inputs in ``folder``, run the CLI there, and snapshot the folder before and after."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    args = case.args(assets, folder)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.fake_tensorrt is not None:
        _fake_tensorrt(monkeypatch, *case.fake_tensorrt)
    before = snapshot(folder)
    if case.patch is not None:
        case.patch(monkeypatch, folder)
        before = snapshot(folder)  # the patch may add the file it stands in the way with
    # A hang (a pipe or device read by mistake) ends the run with every thread's stack, not a silent stall.
    faulthandler.dump_traceback_later(max(300.0, 3 * (case.within or 0)), exit=True)
    started = time.monotonic()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            case.during(folder) if case.during else nullcontext(),
        ):
            warnings.simplefilter("always")
            result = CliRunner().invoke(cli, ["-v", *args] if verbose else args)
    finally:
        faulthandler.cancel_dump_traceback_later()
    seconds = time.monotonic() - started
    monkeypatch.undo()  # the OS-boundary patches end with the run, before the folder is read again
    # A Python warning would print two extra lines on a real stderr (pytest hides them here): none allowed.
    assert not [str(warning.message) for warning in caught]
    if case.within is not None:
        assert seconds < case.within, f"took {seconds:.1f} s, more than {case.within} s"
    return result, before, snapshot(folder)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(
    case: Case,
    assets: Assets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if case.pending:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"waits for {case.pending}"))
    result, before, after = run_case(case, assets, tmp_path / "case", monkeypatch)
    stderr_lines = [line for line in result.stderr.splitlines() if line.strip()]
    error_lines = [line for line in stderr_lines if not _LOG_LINE.match(line)]
    context = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exception is None or isinstance(result.exception, SystemExit), context
    assert result.exit_code == case.exit_code, context
    assert "Traceback" not in result.output, context
    assert not assets.marker.exists(), "unpickling the checkpoint ran its payload"
    if case.exit_code == 0:  # a named skip: one warning says what was left out, the run goes on
        assert not [line for line in error_lines if line.startswith("error")], context
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [line for line in warned if case.fragment in line], f"{context}\nwarnings: {warned}"
        added = set(after) - set(before)
        assert all(any(fnmatch.fnmatch(name, glob) for glob in case.creates) for name in added), added
        assert {name: after[name] for name in before} == before, "files changed or disappeared"
        return
    assert result.stdout == "", context
    assert len(error_lines) == 1 and error_lines[0].startswith("error: "), context
    assert case.fragment in error_lines[0], context
    assert before == after, "files changed, disappeared or were left behind"


def test_cases_are_many_unique_and_cover_every_command() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert {case.command for case in CASES} >= {
        "export",
        "build-engine",
        "verify",
        "predict",
        "bench",
        "train",
        "triton",
    }
    assert {case.exit_code for case in CASES} == {0, 1, 2}
    assert all(case.creates == () or case.exit_code == 0 for case in CASES)


def test_readme_lists_every_case() -> None:
    """tests/README.md carries the generated table: same cases, commands, codes and fragments, all passing."""

    def without_results(table: str) -> list[str]:
        return [line.rsplit("|", 2)[0] for line in table.splitlines()]

    table = readme_table()
    assert without_results(table) == without_results(markdown_table())
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(CASES)
    results = {row.split("|")[2].strip(" `"): row.rsplit("|", 2)[1].strip() for row in rows}
    assert results == {case.id: "pending" if case.pending else "pass" for case in CASES}


def test_verbose_shows_the_traceback(assets: Assets, tmp_path: Path) -> None:
    """The one subprocess run: with ``-v`` the same bad input ends in Python's traceback, not one line."""
    broken = tmp_path / "model.onnx"
    broken.write_bytes(assets.onnx.read_bytes()[:1000])
    command = [sys.executable, "-m", "sedeploy", "-v", "predict", str(broken), str(assets.image)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "BadInputError" in result.stderr and "not a readable ONNX file" in result.stderr


# Inputs that look odd but are images a user expects classified: accepted, not errors.


def _predict(artifact: Path, image: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["predict", str(artifact), str(image), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert not report["skipped"], report
    return report


def _same_top1_as(assets: Assets, tmp_path: Path, odd: Path, plain: Image.Image) -> None:
    """``odd`` must classify exactly like ``plain`` (the same picture as an 8-bit RGB PNG)."""
    reference = tmp_path / "reference.png"
    plain.save(reference)
    got, expected = _predict(assets.ort, odd), _predict(assets.ort, reference)
    got_top, expected_top = got["predictions"][0], expected["predictions"][0]
    assert got_top["indices"] == expected_top["indices"]
    assert got_top["probabilities"] == pytest.approx(expected_top["probabilities"], abs=1e-4)


def test_one_pixel_image_is_resized_and_classified(assets: Assets, tmp_path: Path) -> None:
    """A 1x1 image is a valid (if useless) picture: it is upscaled like any small image, not refused."""
    pixel = Image.new("RGB", (1, 1), (200, 30, 90))
    path = tmp_path / "pixel.png"
    pixel.save(path)
    report = _predict(assets.ort, path)
    assert len(report["predictions"]) == 1


def test_cmyk_images_are_converted_to_rgb(assets: Assets, tmp_path: Path) -> None:
    """A CMYK TIFF (lossless) classifies exactly like the RGB picture it came from; a CMYK JPEG is accepted too."""
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    tiff, jpeg = tmp_path / "cmyk.tif", tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(tiff)
    rgb.convert("CMYK").save(jpeg, quality=95)
    assert Image.open(tiff).mode == Image.open(jpeg).mode == "CMYK"
    _same_top1_as(assets, tmp_path, tiff, rgb)
    assert len(_predict(assets.ort, jpeg)["predictions"]) == 1


def test_16_bit_grayscale_png_is_scaled_to_8_bits(assets: Assets, tmp_path: Path) -> None:
    gray8 = np.random.default_rng(2).integers(0, 256, (20, 20), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray((gray8 * 257).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    _same_top1_as(assets, tmp_path, path, Image.fromarray(gray8.astype(np.uint8)).convert("RGB"))


def test_animated_gif_uses_its_first_frame(assets: Assets, tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 255, 255), (0, 0, 0), (0, 128, 0))]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(path), "n_frames", 1) == 3
    _same_top1_as(assets, tmp_path, path, frames[0])


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    """The 20000x20000 header is refused from its size alone: nothing decoded, no memory spent."""
    from sedeploy.data import ImageTooLargeError, load_image

    path = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    assert path.stat().st_size < 200
    decoded = images_decoded()
    with pytest.raises(ImageTooLargeError, match="too large"):
        load_image(path, 3)
    with pytest.raises(ImageTooLargeError, match="max_pixels=100"):
        load_image(png_header_only(tmp_path / "big.png", 4000, 4000), 3, max_pixels=100)
    assert images_decoded() == decoded


def test_pixel_limit_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sedeploy.data import ImageTooLargeError, load_image

    path = tmp_path / "image.png"
    Image.new("RGB", (40, 30)).save(path)
    assert load_image(path, 3).size == (40, 30)
    monkeypatch.setenv("SEDEPLOY_MAX_IMAGE_PIXELS", str(40 * 30 - 1))
    with pytest.raises(ImageTooLargeError, match="max_pixels=1199"):
        load_image(path, 3)
    monkeypatch.setenv("SEDEPLOY_MAX_IMAGE_PIXELS", str(40 * 30))
    assert load_image(path, 3).size == (40, 30)


def test_unpickling_payload_really_would_run(assets: Assets, tmp_path: Path) -> None:
    """The malicious checkpoint is real: loading it unsafely does create the marker (so its absence means something)."""
    from bad_inputs_cases import _malicious_checkpoint

    marker_assets = Assets(**{**assets.__dict__, "marker": tmp_path / "ran"})
    path = _malicious_checkpoint(marker_assets, tmp_path)
    torch.load(path, weights_only=False)
    assert (tmp_path / "ran").exists()
    os.remove(tmp_path / "ran")
