"""The source model and the artifact are read once per process: parses and hashes counted, not assumed.

Every reference to the parse (``artifacts.metadata.load_onnx``, ``onnx.load``) and to the hash
(``files.sha256_of_file``) in every loaded sedeploy module is wrapped for the duration of one INT8 build and one
``verify``, and the calls that read the source file are counted.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image
from tiny_models import export_tiny

import sedeploy.artifacts.metadata as metadata_module
import sedeploy.files as files_module
from sedeploy.build import BuildOptions, build_engine
from sedeploy.verify import verify


@contextmanager
def counting() -> Iterator[Counter[tuple[str, str]]]:
    """Count parses and hashes per file, through every reference any sedeploy module holds."""
    counts: Counter[tuple[str, str]] = Counter()
    originals: dict[str, Callable[..., Any]] = {
        "parse": metadata_module.load_onnx,
        "onnx.load": onnx.load,
        "hash": files_module.sha256_of_file,
        "hash-handle": files_module.sha256_of_handle,
    }

    def wrap(kind: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(first: Any, *args: Any, **kwargs: Any) -> Any:
            name = getattr(first, "name", first)  # an open handle names its file
            if isinstance(name, (str, Path)):
                counts[(kind.split("-")[0].replace("onnx.load", "parse"), Path(name).name)] += 1
            return function(first, *args, **kwargs)

        return counted

    wrapped = {kind: wrap(kind, function) for kind, function in originals.items()}
    patched: list[tuple[Any, str, Any]] = []
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if not (name.startswith("sedeploy") or module is onnx):
            continue
        for attribute, value in list(vars(module).items()):
            for kind, original in originals.items():
                if value is original:
                    patched.append((module, attribute, value))
                    setattr(module, attribute, wrapped[kind])
    try:
        yield counts
    finally:
        for module, attribute, value in patched:
            setattr(module, attribute, value)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("read-once")
    model = export_tiny(root / "tiny.onnx")
    calib = root / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for index in range(24):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(calib / f"{index}.png")
    return model, calib


def test_an_int8_build_parses_and_hashes_its_source_at_most_once(tiny: tuple[Path, Path]) -> None:
    model, calib = tiny
    options = BuildOptions(
        precision="int8", backend="onnxruntime", calib_dir=calib, calib_size=24, gate=False
    )
    with counting() as counts:
        build_engine(model, options)
    source = model.name
    assert counts[("parse", source)] == 1, counts
    assert counts[("hash", source)] == 1, counts


def test_verify_reads_the_artifact_and_its_source_once(tiny: tuple[Path, Path]) -> None:
    model, calib = tiny
    options = BuildOptions(
        precision="int8", backend="onnxruntime", calib_dir=calib, calib_size=24, gate=False
    )
    artifact = build_engine(model, options).artifact
    with counting() as counts:
        verify(artifact, num=8)
    assert counts[("hash", artifact.name)] == 1, counts
    assert counts[("hash", model.name)] <= 1, counts
    assert counts[("parse", model.name)] <= 1, counts
