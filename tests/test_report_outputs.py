"""A report file (--json FILE, --markdown, --plot) never writes over the command's inputs (issue 35)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_models import export_tiny

from sedeploy.cli import cli


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("outputs") / "tiny.onnx")


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["bench", "{model}", "--json", "{model}"], "--json {model} is the artifact"),
        (["bench", "{model}", "--markdown", "{link}"], "--markdown {link} is the artifact"),
        (["bench", "{model}", "--json", "{tmp}/r.json", "--plot", "{tmp}/r.json"], "are the same file"),
        (["verify", "{model}", "--data", "{images}", "--json", "{images}/0.png"], "is a held-out image"),
    ],
)
def test_a_report_over_an_input_is_refused_before_any_work(
    model: Path, tmp_path: Path, arguments: list[str], fragment: str
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(images / "0.png")
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    values = {"model": str(model), "link": str(link), "tmp": str(tmp_path), "images": str(images)}
    before = {path: path.read_bytes() for path in (model, images / "0.png")}
    result = CliRunner().invoke(cli, [argument.format(**values) for argument in arguments])
    assert result.exit_code == 2, result.output
    assert fragment.format(**values) in result.output and "Traceback" not in result.output
    assert {path: path.read_bytes() for path in before} == before
    assert not (tmp_path / "r.json").exists()
