"""``build-engine --int8`` repairs what its own parity gate catches (issue 30 item 4).

Function-preserving outlier variants of the shipped digits model (``tests/precision/int8_outliers.py``) break
plain INT8; the build equalizes (conv -> conv outliers) or keeps the fewest layers float (a residual-stream
outlier equalization cannot reach), publishes the first file that passes and records what it did; ``repair=False``
refuses naming the worst layers; ``gate=False`` never repairs; the shipped model as it is builds as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from precision.int8_outliers import (
    PAIR_BLOCKS,
    PAIR_CHANNELS,
    REPOSITORY,
    RESIDUAL_BLOCKS,
    RESIDUAL_CHANNELS,
    SHIPPED,
    outlier_pairs,
    residual_outlier,
    shipped_digits_onnx,
    write_variant,
)

from sedeploy.artifacts.manifest import read_manifest
from sedeploy.build import BuildOptions, build_engine
from sedeploy.building.repair import equalized_cache
from sedeploy.cli import cli
from sedeploy.errors import ConfigError
from sedeploy.measure.layers import int8_mac_share
from sedeploy.precision import CalibrationRanges, Int8Recipe, calibration_cache_path, lint_tensorrt_qdq
from sedeploy.verify import verify

CALIBRATION = REPOSITORY / "calibration"
CALIB_SIZE = 128
"""Gate images in-sample: the cosine floors decide (a 0.5-point top-1 rule needs 200 images), builds stay fast."""
CONSUMERS = {f"{block}.conv2" for block in PAIR_BLOCKS}


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped model and its two outlier variants (logits unchanged), each alone in a folder to copy from."""
    folder = tmp_path_factory.mktemp("variants")
    model = onnx.load(str(shipped_digits_onnx()))
    return {
        "shipped": write_variant(model, folder / "shipped.onnx"),
        "pairs": write_variant(
            outlier_pairs(model, PAIR_BLOCKS, PAIR_CHANNELS, 300.0), folder / "pairs.onnx"
        ),
        "residual": write_variant(
            residual_outlier(model, RESIDUAL_BLOCKS, RESIDUAL_CHANNELS, 60.0), folder / "residual.onnx"
        ),
    }


def _copy(variants: dict[str, Path], name: str, folder: Path) -> Path:
    return Path(shutil.copy(variants[name], folder / "digits.onnx"))


def _options(**given: object) -> BuildOptions:
    return BuildOptions(
        precision="int8",
        backend="onnxruntime",
        calib_dir=CALIBRATION,
        calib_size=CALIB_SIZE,
        **given,  # type: ignore[arg-type]
    )


def test_the_shipped_model_builds_as_before(variants: dict[str, Path], tmp_path: Path) -> None:
    model = _copy(variants, "shipped", tmp_path)
    result = build_engine(model, _options(target="cpu"))
    assert result.repaired is None and "repaired" not in result.to_text()
    recipe = read_manifest(result.artifact).recipe
    assert recipe["repair"] == {"status": "not needed"}
    assert recipe["float_nodes"] == [] and recipe["equalize"] is False
    assert "equalization" not in recipe and "int8_mac_share" not in recipe
    assert not list(tmp_path.glob("*equalized*")) and not list(tmp_path.glob("*sensitivity*"))


@pytest.mark.parametrize("flavour", ["cpu", "tensorrt"])
def test_outlier_pairs_are_repaired_by_equalization(
    variants: dict[str, Path], tmp_path: Path, flavour: str
) -> None:
    model = _copy(variants, "pairs", tmp_path)
    result = build_engine(model, _options(target=flavour))
    assert result.repaired is not None and result.repaired.startswith("cross-layer equalization on 12 pairs")
    assert f"repaired: {result.repaired}" in result.to_text()
    assert result.fidelity is not None and result.fidelity.min_cosine >= 0.99
    manifest = read_manifest(result.artifact)
    recipe = manifest.recipe
    assert recipe["equalize"] is True and recipe["equalization"]["pairs"] == 12
    assert recipe["float_nodes"] == []  # equalization alone mends it
    repair = recipe["repair"]
    assert repair["status"] == "repaired" and repair["target_met"] is True
    assert repair["target"] == {"min_cosine": 0.99, "max_top1_drop": 0.5}
    assert [step["step"] for step in repair["steps"]] == ["plain", "equalize"]
    assert repair["steps"][0]["meets_target"] is False and repair["steps"][0]["effect"]["min_cosine"] < 0.9
    assert recipe["int8_mac_share"] == pytest.approx(int8_mac_share(result.artifact), abs=1e-4)
    assert recipe["int8_mac_share"] > 0.99
    assert recipe["parity_gate"] == "passed"

    # The equalized graph's ranges live in their own cache: the plain graph's cache still holds the plain ranges.
    int8 = Int8Recipe(flavour=flavour)
    plain_cache = CalibrationRanges.read(calibration_cache_path(model, int8))
    equalized = CalibrationRanges.read(equalized_cache(model, int8))
    assert plain_cache is not None and equalized is not None
    assert plain_cache.model_sha256 == manifest.source_onnx_sha256 != equalized.model_sha256

    report = verify(result.artifact, data=SHIPPED / "heldout", num=128)
    assert report.passed, report.failures


def test_a_residual_outlier_is_repaired_by_fp16_layers(variants: dict[str, Path], tmp_path: Path) -> None:
    """Equalization cannot reach the residual stream: the fewest layers kept FP16, the file strongly typed."""
    model = _copy(variants, "residual", tmp_path)
    result = build_engine(model, _options(target="tensorrt"))
    assert result.repaired is not None and "kept fp16" in result.repaired, result.repaired
    recipe = read_manifest(result.artifact).recipe
    assert recipe["float_nodes"] and all(
        module.startswith(("layer3.", "norm")) for module in recipe["float_modules"]
    )
    assert recipe["int8_mac_share"] >= 0.9
    assert recipe["repair"]["steps"][-1]["step"].startswith("float layers")
    graph = onnx.load(str(result.artifact))
    assert lint_tensorrt_qdq(graph, high_precision="fp16") == []
    typed = onnx.shape_inference.infer_shapes(graph)
    types = {info.name: info.type.tensor_type.elem_type for info in typed.graph.value_info}
    floated = [node for node in graph.graph.node if node.name in set(recipe["float_nodes"])]
    assert floated and all(types[node.output[0]] == onnx.TensorProto.FLOAT16 for node in floated)
    assert result.fidelity is not None and result.fidelity.min_cosine >= 0.99


def test_no_repair_refuses_naming_the_worst_layers_and_no_gate_never_repairs(
    variants: dict[str, Path], tmp_path: Path
) -> None:
    model = _copy(variants, "pairs", tmp_path)
    args = ["build-engine", str(model), "--int8", "--backend", "onnxruntime", "--target", "cpu"]
    args += ["--calib-dir", str(CALIBRATION), "--calib-size", str(CALIB_SIZE)]
    refused = CliRunner().invoke(cli, [*args, "--no-repair"])
    assert refused.exit_code == 1, refused.output
    message = refused.output.strip().splitlines()[-1]
    assert "nothing was published; its worst layers: " in message and "--repair" in message
    named = message.split("its worst layers: ")[1].split(" (")[0].split(", ")
    assert set(named) <= CONSUMERS and named, message
    assert not list(tmp_path.glob("digits.int8*"))

    published = CliRunner().invoke(cli, [*args, "--no-gate", "--json", "-"])
    assert published.exit_code == 0, published.output
    built = json.loads(published.output)
    assert built["repaired"] is None
    recipe = read_manifest(Path(built["artifacts"][0])).recipe
    assert recipe["repair"] == {"status": "not run", "why": "gate=False"} and recipe["equalize"] is False
    assert recipe["parity_gate"] == "failed, published with gate=False"


def test_min_int8_mac_share_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"min_int8_mac_share must be in \[0, 1\]"):
        BuildOptions(min_int8_mac_share=1.5)
    assert BuildOptions().to_dict()["repair"] is True


def test_openvino_ignored_scope_takes_onnx_node_names(variants: dict[str, Path]) -> None:
    pytest.importorskip("nncf")
    from sedeploy.backends.openvino.builder import ignored_scope
    from sedeploy.backends.openvino.compat import openvino

    model = openvino().Core().read_model(str(variants["shipped"]))
    graph = onnx.load(str(variants["shipped"]))
    conv = next(node.name for node in graph.graph.node if node.op_type == "Conv")
    gemm = next(node.name for node in graph.graph.node if node.op_type == "Gemm")
    scope = ignored_scope(model, [conv, gemm])
    assert scope.names == [conv] and scope.patterns == [f"{gemm}/.*"]  # OpenVINO splits the Gemm
    with pytest.raises(ConfigError, match="float_nodes names 'layer9'"):
        ignored_scope(model, ["layer9"])


@pytest.mark.heavy
def test_openvino_repairs_outlier_pairs_by_equalization_before_nncf(
    variants: dict[str, Path], tmp_path: Path
) -> None:
    """NNCF on the equalized graph (about 30 s here: each NNCF build costs seconds)."""
    pytest.importorskip("nncf")
    model = _copy(variants, "pairs", tmp_path)
    options = BuildOptions(
        precision="int8",
        backend="openvino",
        calib_dir=CALIBRATION,
        calib_size=CALIB_SIZE,
        float_type="f32",
        hint="latency",
    )
    result = build_engine(model, options)
    assert result.repaired is not None and result.repaired.startswith("cross-layer equalization"), (
        result.repaired
    )
    recipe = read_manifest(result.artifact).recipe
    assert recipe["equalize"] is True and recipe["repair"]["status"] == "repaired"
    assert result.fidelity is not None and result.fidelity.min_cosine >= 0.99
    assert np.isclose(recipe["int8_mac_share"], result.precision_audit.shares()["int8"], atol=1e-4)  # type: ignore[union-attr]
