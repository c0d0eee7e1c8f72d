"""The runtime without PyTorch (issue 31): the shipped model's exported ONNX through predict, verify,
build-engine --int8, bench, info and ``sedeploy.load`` + ``classify``, in an environment with no torch.

These run in ``.ci/run``'s second virtual environment (``pip install -e '.[cpu]' pytest``, no PyTorch):
``pytest tests/torchless -m torchless --confcutdir tests/torchless`` (the suite's own conftest imports torch).
Beside PyTorch they are skipped: whether a module loads torch is decided there by the import-rule test
(tests/test_import_rules.py), here by torch being absent. Each test ends by asserting torch was never loaded.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED = REPOSITORY / "models" / "digits_se_resnet"
ONNX = SHIPPED / "model.onnx"
HELDOUT = SHIPPED / "heldout"
CALIBRATION = REPOSITORY / "calibration"

pytestmark = [
    pytest.mark.torchless,
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is not None,
        reason="PyTorch is installed here; these run in .ci/run's torch-free venv (.venv-torchless)",
    ),
]


def _no_torch() -> None:
    loaded = sorted(
        name for name in sys.modules if name.split(".")[0] in ("torch", "onnxscript", "torchvision")
    )
    assert loaded == [], f"PyTorch was loaded: {loaded[:5]}"


def _sedeploy(*args: object, catch: bool = False) -> Result:
    """``sedeploy ARGS`` in this process (so ``sys.modules`` shows what the command loaded)."""
    from sedeploy.cli.app import cli

    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=catch)


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``build-engine --int8`` from a copy of the shipped ONNX (the calibration cache is written beside the
    source, not in the repository), calibrated on the repository's calibration images."""
    folder = tmp_path_factory.mktemp("int8")
    source = folder / "digits.onnx"
    shutil.copyfile(ONNX, source)
    output = folder / "digits.int8.onnx"
    result = _sedeploy(
        "build-engine", source, "--int8", "--calib-dir", CALIBRATION, "--calib-size", "64", "-o", output
    )
    assert result.exit_code == 0, result.output
    built = folder / "digits.int8.ort.onnx"
    assert built.is_file() and (folder / "digits.int8.ort.onnx.manifest.json").is_file(), result.output
    return built


def test_load_and_classify_from_python() -> None:
    import sedeploy

    runner = sedeploy.load(ONNX)
    images = sorted((HELDOUT / "7").glob("*.png"))[:8]
    results = runner.classify(images, top_k=3)
    assert [result.label for result in results] == ["7"] * 8
    _no_torch()


def test_info_reads_the_onnx_metadata() -> None:
    result = _sedeploy("info", ONNX, "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["arch"], report["num_classes"], report["params"]) == ("se_preact_resnet", 10, 721_090)
    assert report["input_size"] == [1, 32, 32]
    _no_torch()


def test_predict_names_the_right_digits() -> None:
    result = _sedeploy("predict", ONNX, HELDOUT / "3")
    assert result.exit_code == 0, result.output
    lines = [
        line for line in result.output.splitlines() if line.endswith(tuple("0123456789")) or "\t" in line
    ]
    top1 = [line.split("\t")[1].split()[0] for line in lines if "\t" in line]
    assert top1 and sum(label == "3" for label in top1) >= 0.95 * len(top1), result.output
    _no_torch()


def test_build_int8_then_verify_against_its_onnx_and_bench(int8_artifact: Path) -> None:
    manifest = json.loads(int8_artifact.with_name(int8_artifact.name + ".manifest.json").read_text())
    assert manifest["precision"] == "int8"
    verified = _sedeploy("verify", int8_artifact, "--reference", ONNX, "--data", HELDOUT, "--num", "128")
    assert verified.exit_code == 0, verified.output
    assert "PASS" in verified.output
    benched = _sedeploy("bench", int8_artifact, ONNX, "--batch", "1", "--duration", "0.2", "--rounds", "1")
    assert benched.exit_code == 0, benched.output
    assert "int8" in benched.output.lower()
    _no_torch()


def test_a_stage_that_needs_pytorch_says_so_in_one_line() -> None:
    from sedeploy.errors import MissingDependencyError

    for args in (
        ["export", "se_preact_resnet", "-o", "x.onnx"],
        ["verify", str(ONNX), "--reference", "se_resnet18"],
    ):
        result = _sedeploy(*args, catch=True)
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [
            "error: torch is needed for this step but cannot be imported (No module named 'torch'); "
            "install it with: pip install 'sedeploy[torch]'"
        ]
    with pytest.raises(MissingDependencyError, match=r"sedeploy\[torch\]"):
        import sedeploy

        sedeploy.load("se_preact_resnet")
    _no_torch()


def test_the_help_of_every_command_reads_without_pytorch() -> None:
    """``--help`` shows each command's defaults and choices (opset, layouts, schedules) without importing PyTorch."""
    from sedeploy.cli.app import cli

    for name in sorted(cli.commands):
        result = _sedeploy(name, "--help")
        assert result.exit_code == 0, f"{name}: {result.output}"
    assert "[default: 18;" in _sedeploy("export", "--help").output
    assert "[cosine|onecycle]" in _sedeploy("train", "--help").output
    _no_torch()
