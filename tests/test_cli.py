"""The command line: real subprocess runs of the installed entry point and in-process click runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import sedeploy
from sedeploy.cli import cli


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sedeploy", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert sedeploy.__version__ in result.stdout


def test_info_json_parses_and_carries_the_paper_figures() -> None:
    result = _run("info", "se_resnet50", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["arch"] == "se_resnet50"
    assert report["gmacs"] == pytest.approx(3.87, abs=0.01)
    assert report["gflops"] == pytest.approx(2 * report["gmacs"])
    assert report["params"] / 1e6 == pytest.approx(28.1, abs=0.1)
    assert report["plain_twin"]["arch"] == "resnet50"
    assert report["plain_twin"]["gmacs"] == pytest.approx(3.86, abs=0.01)
    assert 0.15 < report["se_overhead"]["macs_pct"] < 0.40
    assert [s["name"] for s in report["stages"]] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def test_info_text_and_options() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "info",
            "se_resnet18",
            "--in-chans",
            "1",
            "--num-classes",
            "4",
            "--img-size",
            "473",
            "-O",
            "reduction=8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "input 1x473x473, 4 classes" in result.output
    assert "vs resnet18" in result.output


def test_info_non_square_size() -> None:
    result = CliRunner().invoke(cli, ["info", "resnet18", "--img-size", "96x128", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["input_size"] == [3, 96, 128]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["info", "se_resnet5"], "unknown architecture 'se_resnet5'"),
        (["info", "se_resnet50", "-O", "reduction=4096"], "C/r < 1"),
        (["info", "se_resnet50", "-O", "se_variant=middle"], "unknown se_variant"),
    ],
)
def test_bad_model_options_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["info", "se_resnet50", "--img-size", "big"], ["info"], ["nonsense"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert CliRunner().invoke(cli, args).exit_code == 2


def test_verbose_shows_the_traceback() -> None:
    result = _run("-v", "info", "se_resnet5")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_bf16_without_bf16_units_exits_1_with_one_line(trained_digits, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A CPU without BF16 units (a recorded Cascade Lake cpuinfo stands in for this one): one line, exit 1."""
    import shutil
    from pathlib import Path

    from sedeploy import host

    text = (Path(__file__).parent / "fixtures" / "cpuinfo" / "intel_xeon_cascade_lake_vnni.txt").read_text()
    monkeypatch.setattr(host, "_cpuinfo", lambda: text)
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    result = CliRunner().invoke(cli, ["build-engine", str(model), "--bf16"])
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and len(lines) == 1 and "no BF16 units" in lines[0], result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["digits.onnx"]


def test_every_command_help_reads_its_library_defaults() -> None:
    """Each command's help renders, which reads every default, choice list and help text it takes from the
    library (``cli.options.Later``): a name that moved or vanished fails here rather than at a user's prompt."""
    from sedeploy.cli.options import Later, LaterChoice

    assert set(cli.commands) >= {
        "bench", "build-engine", "demo", "export", "info", "inspect", "loadtest", "optimize", "predict", "serve",
        "train", "triton", "verify",
    }  # fmt: skip
    for name, command in cli.commands.items():
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output, result.exception)
        assert f"Usage: cli {name}" in result.output
        for param in command.params:
            assert not isinstance(param.default, Later), (name, param.name)
            assert not isinstance(getattr(param, "_later_help", None), Later), (name, param.name)
            if isinstance(param.type, LaterChoice):
                assert param.type.choices and all(isinstance(c, str) for c in param.type.choices), (
                    name,
                    param.name,
                )
    from sedeploy.precision import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD

    text = " ".join(CliRunner().invoke(cli, ["build-engine", "--help"]).output.split())
    assert f"--calib-method [{'|'.join((*CALIBRATION_METHODS, 'sweep'))}]" in text
    assert f"[default: {DEFAULT_CALIBRATION_METHOD}]" in text


def test_a_parameter_name_inside_a_path_is_left_alone() -> None:
    from sedeploy.cli import cli, in_cli_words
    from sedeploy.errors import ConfigError

    error = ConfigError(
        "output runs/output/w.onnx is the source model; give output another path", params=("output",)
    )
    message = in_cli_words(error, cli.commands["build-engine"])
    assert message == "--output runs/output/w.onnx is the source model; give --output another path"


def test_optimize_takes_the_rounds_the_demo_searched_with() -> None:
    from click.testing import CliRunner

    from sedeploy.cli import cli

    result = CliRunner().invoke(cli, ["optimize", "--help"])
    assert result.exit_code == 0 and "--rounds" in result.output


def test_export_says_what_is_missing_about_the_weights(tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, ["export", "--weights", str(tmp_path / "typo.safetensors")])
    assert missing.exit_code == 1 and "typo.safetensors does not exist" in missing.output
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not a checkpoint")
    unrecorded = CliRunner().invoke(cli, ["export", "--weights", str(weights)])
    assert unrecorded.exit_code == 2 and "has no training record (model.json beside it" in unrecorded.output
