"""``verify --layers``: the per-layer INT8 report, named by PyTorch module, through the command and the library
(issue 30 item 1); ``inspect --json`` reports ``int8_mac_share`` for every INT8 ONNX."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from precision.int8_outliers import (
    PAIR_BLOCKS,
    PAIR_CHANNELS,
    REPOSITORY,
    SHIPPED,
    outlier_pairs,
    shipped_digits_onnx,
    write_variant,
)

from sedeploy.artifacts.naming import optimized_onnx_path
from sedeploy.build import BuildOptions, build_engine
from sedeploy.cli import cli
from sedeploy.errors import ConfigError
from sedeploy.measure.layers import int8_mac_share
from sedeploy.verify import verify

CONSUMERS = {f"{block}.conv2" for block in PAIR_BLOCKS}
HELDOUT = SHIPPED / "heldout"


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain INT8 (cpu flavour, published with gate=False) of the outlier variant: its three conv2 layers read
    channels 300 times wider than the rest."""
    folder = tmp_path_factory.mktemp("layers")
    model = onnx.load(str(shipped_digits_onnx()))
    source = write_variant(outlier_pairs(model, PAIR_BLOCKS, PAIR_CHANNELS, 300.0), folder / "digits.onnx")
    options = BuildOptions(
        precision="int8",
        backend="onnxruntime",
        target="cpu",
        calib_dir=REPOSITORY / "calibration",
        calib_size=128,
        gate=False,
    )
    return build_engine(source, options).artifact


def test_verify_layers_names_the_altered_layers_worst_first(broken: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report_path, plot = tmp_path / "report.json", tmp_path / "layers.png"
    args = ["verify", str(broken), "--data", str(HELDOUT), "--num", "64", "--layers"]
    result = CliRunner().invoke(cli, [*args, "--json", str(report_path), "--plot", str(plot)])
    assert result.exit_code == 1, result.output  # plain INT8 of this variant fails verify
    data = json.loads(report_path.read_text())
    rows = data["layers"]
    assert {row["module"] for row in rows[:3]} == CONSUMERS
    errors = [row["error"] for row in rows if row["error"] is not None]  # None: no error at all (inf dB)
    assert errors == sorted(errors)  # worst (lowest SQNR) first
    for key in ("module", "onnx_node", "error", "weight_error", "activation_error"):
        assert key in rows[0]
    assert rows[0]["activation_error"] < rows[0]["weight_error"]  # its input's quantization is what fails
    assert data["layer_report"]["images"] == 64 and data["layer_report"]["reference"].endswith("digits.onnx")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = CliRunner().invoke(cli, args).output
    assert f"per-layer INT8 error of {broken} against" in text
    assert "equalize with layer" in text


def test_layers_with_every_kind_of_reference(broken: Path) -> None:
    source = broken.with_name("digits.onnx")
    by_onnx = verify(broken, source, data=HELDOUT, num=32, layers=True)
    assert by_onnx.layer_report is not None and by_onnx.layer_report.reference == str(source)
    # Weights with their record: verify runs PyTorch, the per-layer report the FP32 ONNX the manifest names.
    by_weights = verify(broken, SHIPPED / "model.safetensors", data=HELDOUT, num=32, layers=True)
    assert by_weights.reference_runner.startswith("torch")
    assert by_weights.layer_report is not None and by_weights.layer_report.reference == str(source)
    # ONNX Runtime's optimized graph renames and fuses nodes: its precision file is reported.
    optimized = verify(optimized_onnx_path(broken), data=HELDOUT, num=32, layers=True)
    assert optimized.layer_report is not None and optimized.layer_report.artifact == str(broken)
    for report in (by_onnx, by_weights, optimized):
        assert report.layer_report is not None
        assert {row.module for row in report.layer_report.layers[:3]} == CONSUMERS


def test_layers_refuses_what_it_cannot_read(broken: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"layers reports the error of INT8 layers; digits\.onnx is fp32"):
        verify(broken.with_name("digits.onnx"), broken.with_name("digits.onnx"), num=4, layers=True)
    ir = tmp_path / "digits.int8.openvino.xml"
    ir.write_text("<net/>")
    result = CliRunner().invoke(cli, ["verify", str(ir), "--layers"])
    assert result.exit_code == 2
    assert (
        result.output.strip().splitlines()[-1].startswith("error: --layers is not supported for OpenVINO IRs")
    )


def test_inspect_reports_the_int8_mac_share_of_every_int8_onnx(broken: Path) -> None:
    share = int8_mac_share(broken)
    assert share == pytest.approx(1.0)
    for path in (broken, optimized_onnx_path(broken)):
        result = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["int8_mac_share"] == pytest.approx(share, abs=1e-4)
    fp32 = CliRunner().invoke(cli, ["inspect", str(broken.with_name("digits.onnx")), "--json"])
    assert json.loads(fp32.output)["int8_mac_share"] is None


def test_a_copy_without_its_precision_file_says_what_is_missing(broken: Path, tmp_path: Path) -> None:
    optimized = optimized_onnx_path(broken)
    alone = tmp_path / optimized.name
    shutil.copy(optimized, alone)
    with pytest.raises(ConfigError, match=r"layers reads the Q/DQ ONNX .* which is not beside it"):
        verify(alone, broken.with_name("digits.onnx"), num=4, layers=True, verify_hash=False)
