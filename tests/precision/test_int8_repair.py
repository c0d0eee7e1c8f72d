"""INT8 that explains and repairs itself, on the shipped digits model and function-preserving outlier variants of it.

Module names survive export into every precision file; an outlier variant breaks plain INT8 and the per-layer
report names the altered layers; cross-layer equalization mends it; an outlier in the residual stream, out of
equalization's reach, is mended by the fewest float layers the sensitivity ranking finds (both flavours).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from int8_outliers import outlier_pairs, residual_outlier

import sedeploy
from sedeploy.artifacts.metadata import read_metadata
from sedeploy.artifacts.module_names import MODULE_NAMES_KEY, read_module_names
from sedeploy.backends.onnxruntime import create_session
from sedeploy.compare import compare_logits, top1_accuracy
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.measure.layers import int8_mac_share, layer_errors
from sedeploy.measure.sensitivity import (
    REPAIR_THRESHOLDS,
    Trials,
    fewest_float_layers,
    sensitivity_ranking,
    suspects,
)
from sedeploy.precision import (
    FLAVOURS,
    Int8Recipe,
    PrecisionError,
    calibrate,
    convert_fp16,
    fidelity_optimization_level,
    lint_tensorrt_qdq,
    quantize_int8,
)
from sedeploy.precision.equalize import check_function_preserved, equalize

PAIR_BLOCKS = ("layer1.1", "layer2.0", "layer3.1")
"""Blocks whose conv1 -> conv2 path gets outlier channels (three of the six)."""
PAIR_CHANNELS = (3, 7, 11)
RESIDUAL_BLOCKS = ("layer3.0", "layer3.1")
RESIDUAL_CHANNELS = (3, 50, 77)
K = 300.0
RESIDUAL_K = 60.0


def _logits(path: Path, images: np.ndarray, flavour: str | None = None) -> np.ndarray:
    level = fidelity_optimization_level({"flavour": flavour}) if flavour else "all"
    session = create_session(path, ["CPUExecutionProvider"], optimization_level=level)
    return session.run(None, {"input": images})[0]


def _quantize(source: Path, output: Path, calibration: np.ndarray, recipe: Int8Recipe) -> dict:  # type: ignore[type-arg]
    ranges = calibrate(source, calibration, "input", recipe, "shipped-calibration")
    return quantize_int8(source, output, ranges, recipe)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_module_names_travel_from_export_into_every_precision_file(shipped_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(str(shipped_digits.onnx_path))
    assert any(prop.key == MODULE_NAMES_KEY for prop in model.metadata_props)
    names = read_module_names(model)
    metadata = read_metadata(shipped_digits.onnx_path)
    torch_model = sedeploy.create_model(metadata.arch, **metadata.options)
    layers = {
        name for name, module in torch_model.named_modules() if type(module).__name__ in ("Conv2d", "Linear")
    }
    onnx_layers = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    # Every convolution and the classifier, each under its own PyTorch name, the BN-folded ones included
    # (the exporter's own scope metadata names the BatchNorm there).
    assert sorted(names[node.name] for node in onnx_layers) == sorted(layers)
    assert (
        names[next(n.name for n in onnx_layers if n.input[1] == "layer2.0.conv1.weight")] == "layer2.0.conv1"
    )
    convert_fp16(shipped_digits.onnx_path, tmp_path / "digits.fp16.onnx")
    files = [tmp_path / "digits.fp16.onnx"]
    for flavour in FLAVOURS:
        output = tmp_path / f"digits.int8-{flavour}.onnx"
        _quantize(
            shipped_digits.onnx_path, output, shipped_digits.calibration[:32], Int8Recipe(flavour=flavour)
        )
        files.append(output)
    for path in files:
        converted = onnx.load(str(path))
        assert read_module_names(converted) == names, path.name
        converted_layers = [node.name for node in converted.graph.node if node.op_type in ("Conv", "Gemm")]
        assert sorted(converted_layers) == sorted(node.name for node in onnx_layers), path.name


@pytest.fixture(scope="module")
def pair_variant(shipped_digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The shipped model with outlier channels on three conv1 -> conv2 paths (function unchanged)."""
    model = onnx.load(str(shipped_digits.onnx_path))
    variant = outlier_pairs(model, PAIR_BLOCKS, PAIR_CHANNELS, K)
    assert check_function_preserved(model, variant, shipped_digits.heldout[:64]) <= 1e-4
    return _save(variant, tmp_path_factory.mktemp("pairs") / "digits.onnx")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_outliers_break_plain_int8_the_report_names_them_and_equalization_mends_it(
    shipped_digits,  # type: ignore[no-untyped-def]
    pair_variant: Path,
    tmp_path: Path,
    flavour: str,
) -> None:
    images, labels = shipped_digits.heldout, shipped_digits.labels
    fp32 = _logits(pair_variant, images)
    plain = tmp_path / "plain.onnx"
    _quantize(pair_variant, plain, shipped_digits.calibration, Int8Recipe(flavour=flavour))
    plain_logits = _logits(plain, images, flavour)
    drop = 100 * (top1_accuracy(fp32, labels) - top1_accuracy(plain_logits, labels))
    print(
        f"{flavour}: plain INT8 of the outlier variant drops {drop:.1f} points ({compare_logits(fp32, plain_logits).to_text()})"
    )
    assert drop >= 10

    report = layer_errors(plain, pair_variant, images[:64])
    print(report.to_text(8))
    worst = report.layers[:10]
    consumers = {f"{block}.conv2" for block in PAIR_BLOCKS}
    producers = {f"{block}.conv1" for block in PAIR_BLOCKS}
    assert {row.module for row in report.layers[:3]} == consumers  # the layers that read the wide channels
    named = {row.module for row in worst} | {module for row in worst for module in row.equalizable_with}
    assert consumers | producers <= named
    for row in report.layers[:3]:
        assert row.activation_error < row.weight_error  # the input's quantization is what fails
        assert row.input_spread is not None and row.input_spread > 50
        assert row.equalizable_with == (row.module.replace("conv2", "conv1"),)
        assert row.hint().startswith("equalize with")
    assert report.to_dict()["layers"][0]["module"] in consumers

    equalized_model, record = equalize(onnx.load(str(pair_variant)))
    check_function_preserved(onnx.load(str(pair_variant)), equalized_model, images[:64])
    equalized_source = _save(equalized_model, tmp_path / "equalized.onnx")
    mended = tmp_path / "mended.onnx"
    built = _quantize(
        equalized_source, mended, shipped_digits.calibration, Int8Recipe(flavour=flavour, equalize=True)
    )
    assert built["equalize"] is True
    comparison = compare_logits(fp32, _logits(mended, images, flavour))
    mended_drop = 100 * (
        top1_accuracy(fp32, labels) - top1_accuracy(_logits(mended, images, flavour), labels)
    )
    print(f"{flavour}: after {record.summary()}: {comparison.to_text()}, drop {mended_drop:.1f} points")
    assert comparison.min_cosine >= 0.98
    assert mended_drop <= 1.0
    # The report compares the equalized file with the variant equalized the same way: nothing stands out.
    after = layer_errors(mended, pair_variant, images[:32])
    assert after.equalized_reference
    assert after.layers[0].error > 20


@pytest.fixture(scope="module")
def residual_variant(shipped_digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The shipped model with three residual-stream channels of its last stage 60 times wider (function unchanged)."""
    model = onnx.load(str(shipped_digits.onnx_path))
    variant = residual_outlier(model, RESIDUAL_BLOCKS, RESIDUAL_CHANNELS, RESIDUAL_K)
    assert check_function_preserved(model, variant, shipped_digits.heldout[:64]) <= 1e-4
    return _save(variant, tmp_path_factory.mktemp("residual") / "digits.onnx")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_residual_outliers_are_mended_by_the_fewest_float_layers(
    shipped_digits,  # type: ignore[no-untyped-def]
    residual_variant: Path,
    tmp_path: Path,
    flavour: str,
) -> None:
    recipe = Int8Recipe(flavour=flavour)
    images, labels = shipped_digits.heldout[::4], shipped_digits.labels[::4]
    ranges = calibrate(residual_variant, shipped_digits.calibration, "input", recipe, "shipped-calibration")
    with Trials(residual_variant, ranges, recipe, images, labels) as trials:
        plain, plain_path = trials.measure()
        assert plain.failures(REPAIR_THRESHOLDS), plain.to_text()
        # Equalization cannot reach a residual stream: it leaves those channels as they are.
        equalized, _ = equalize(onnx.load(str(residual_variant)))
        equalized_path = _save(equalized, tmp_path / "equalized.onnx")
        equalized_ranges = calibrate(equalized_path, shipped_digits.calibration, "input", recipe, "x")
        quantize_int8(equalized_path, tmp_path / "equalized.int8.onnx", equalized_ranges, recipe)
        still = compare_logits(trials.reference, _logits(tmp_path / "equalized.int8.onnx", images, flavour))
        assert still.min_cosine < REPAIR_THRESHOLDS.min_cosine

        report = layer_errors(plain_path, residual_variant, shipped_digits.heldout[:32])
        candidates = suspects(onnx.load(str(plain_path)), [row.onnx_node for row in report.layers[:6]])
        ranking = sensitivity_ranking(trials, candidates=candidates)
        print(ranking.to_text(6))
        repair = fewest_float_layers(trials, ranking.order())
    print(f"{flavour}: {plain.to_text()} -> {repair.summary(recipe.float_type)}: {repair.effect.to_text()}")
    assert repair.passed, repair.reason
    assert not repair.effect.failures(REPAIR_THRESHOLDS)
    assert all(module.startswith(("layer3.", "norm")) for module in repair.float_modules)
    assert repair.int8_mac_share >= 0.9

    # The repaired recipe, built as a build would: its float layers typed as the flavour says.
    repaired = tmp_path / "repaired.onnx"
    built = quantize_int8(
        residual_variant, repaired, ranges, Int8Recipe(flavour=flavour, float_nodes=repair.float_nodes)
    )
    assert built["float_nodes"] == list(repair.float_nodes)
    assert "kept out of INT8 on request" in built["left_in_float"]
    model = onnx.load(str(repaired))
    assert int8_mac_share(model) == pytest.approx(repair.int8_mac_share)
    if flavour == "tensorrt":
        assert lint_tensorrt_qdq(model, high_precision="fp16") == []  # strongly typed: FP16 where not INT8
    repaired_logits = _logits(repaired, shipped_digits.heldout, flavour)
    assert (
        compare_logits(_logits(residual_variant, shipped_digits.heldout), repaired_logits).min_cosine >= 0.98
    )
    del labels


def test_float_nodes_by_node_or_module_name(shipped_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calibration = shipped_digits.calibration[:32]
    plain, floated = tmp_path / "plain.onnx", tmp_path / "floated.onnx"
    _quantize(shipped_digits.onnx_path, plain, calibration, Int8Recipe(flavour="cpu"))
    built = _quantize(
        shipped_digits.onnx_path,
        floated,
        calibration,
        Int8Recipe(flavour="cpu", float_nodes=("layer2.0.conv2", "layer3.0.se")),
    )
    names = read_module_names(onnx.load(str(floated)))
    assert {names[node] for node in built["float_nodes"]} == {
        "layer2.0.conv2",
        "layer3.0.se",
        "layer3.0.se.fc1",
        "layer3.0.se.act",
        "layer3.0.se.fc2",
        "layer3.0.se.gate",
    }
    assert int8_mac_share(plain) == pytest.approx(1.0)
    assert 0.8 < int8_mac_share(floated) < 1.0  # layer2.0.conv2 and the SE FCs read float weights
    assert int8_mac_share(shipped_digits.onnx_path) == 0.0
    with pytest.raises(ConfigError, match=r"float_nodes names 'layer9\.conv1'"):
        _quantize(
            shipped_digits.onnx_path,
            tmp_path / "x.onnx",
            calibration,
            Int8Recipe(flavour="cpu", float_nodes=("layer9.conv1",)),
        )
    with pytest.raises(ConfigError, match="float_nodes"):
        Int8Recipe(float_nodes="layer2.0.conv2")  # type: ignore[arg-type]
    # The per-layer report refuses a reference the file was not quantized from, naming the fix.
    skewed = onnx.load(str(shipped_digits.onnx_path))
    for init in skewed.graph.initializer:
        if init.name.endswith(".weight") and len(init.dims) == 4:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.5, init.name))
    with pytest.raises(BadInputError, match="give the FP32 ONNX it was built from"):
        layer_errors(plain, _save(skewed, tmp_path / "skewed.onnx"), shipped_digits.heldout[:8])
    with pytest.raises(PrecisionError, match="not equalized"):  # the recipe records only what was done
        _quantize(
            shipped_digits.onnx_path,
            tmp_path / "x.onnx",
            calibration,
            Int8Recipe(flavour="cpu", equalize=True),
        )


@pytest.mark.heavy
def test_every_quantizable_node_ranked_puts_the_residual_adds_first(
    shipped_digits, residual_variant: Path
) -> None:  # type: ignore[no-untyped-def]
    """The whole ranking (one build per quantizable node, about 25 s here) rather than the report's suspects."""
    recipe = Int8Recipe(flavour="tensorrt")
    ranges = calibrate(residual_variant, shipped_digits.calibration, "input", recipe, "shipped-calibration")
    with Trials(residual_variant, ranges, recipe, shipped_digits.heldout[::8]) as trials:
        ranking = sensitivity_ranking(trials, modes=("quantized_alone", "float_alone"))
    print(ranking.to_text(8))
    assert {node.module for node in ranking.nodes[:2]} == {"layer3.0", "layer3.1"}
    assert all(node.op_type == "Add" for node in ranking.nodes[:2])
    assert len(ranking.nodes) >= 20
