"""Calibration methods that are what they say: minmax, TensorRT's entropy, percentile; batch-size independence."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sedeploy.artifacts.manifest import read_manifest
from sedeploy.build import BuildOptions, build_engine
from sedeploy.data import load_image_set, preprocessing_for
from sedeploy.precision import (
    CALIBRATION_METHODS,
    Int8Recipe,
    calibrate,
    calibrate_cached,
    calibration_cache_path,
    entropy_threshold_bin,
)
from sedeploy.precision.calibration import CalibrationRanges, entropy_start_bin

FEATURES = 500


def reference_threshold_bin(  # TensorRT's search as ModelOpt loops it: slow on purpose
    histogram: np.ndarray, quantized_bins: int = 128, start: int = 128
) -> int:
    bins = np.asarray(histogram, dtype=np.float64).copy()
    bins[0] = bins[1]
    total = bins.sum()
    best_bin, best = len(bins), np.inf
    for i in range(start, len(bins) + 1):
        space = np.linspace(0, i, num=quantized_bins + 1)
        groups = np.digitize(np.arange(i), space) - 1
        groups[bins[:i] == 0] = -1
        density = np.zeros(quantized_bins)
        members = np.zeros(quantized_bins)
        for index, group in enumerate(groups):
            if group != -1:
                density[group] += bins[index]
                members[group] += 1
        quantized = np.array(
            [density[group] / members[group] if group != -1 else 0.0 for group in groups], dtype=np.float64
        )
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        assert round(reference.sum()) == round(total)
        p = reference / reference.sum()
        q = quantized / quantized.sum() if quantized.sum() > 0 else quantized
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / q), 0.0)
        divergence = float(terms.sum())
        if divergence <= best:  # the largest i on ties
            best, best_bin = divergence, i
    return best_bin


def _histograms() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    samples = [
        np.abs(rng.normal(size=20000)),
        np.abs(rng.standard_t(df=3, size=20000)),
        np.maximum(rng.normal(size=20000), 0.0),  # a ReLU output: half exact zeros
        rng.exponential(size=20000) + 3.0,  # all far from zero
    ]
    return [np.histogram(x, bins=400, range=(0.0, x.max()))[0] for x in samples]


@pytest.mark.parametrize("index", range(4))
def test_vectorised_entropy_search_matches_the_direct_loop(index: int) -> None:
    histogram = _histograms()[index]
    start = entropy_start_bin(histogram, 64)
    assert entropy_threshold_bin(histogram, 64) == reference_threshold_bin(histogram, 64, start)
    assert entropy_threshold_bin(histogram, 64, start=64) == reference_threshold_bin(histogram, 64, 64)


def test_entropy_start_is_tensorrts_for_activations_from_zero_and_later_for_offset_ones() -> None:
    relu, offset = _histograms()[2], _histograms()[3]
    assert entropy_start_bin(relu, 128) == 128
    first = int(np.flatnonzero(offset)[0])
    assert first > 100 and entropy_start_bin(offset, 128) == first + 128


def _identity_model(path: Path) -> Path:
    """``m = x * 1``, ``y = Relu(m) + m``: the calibrated activation ``m`` holds the input's values."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", FEATURES])
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    nodes = [
        helper.make_node("Mul", ["x", "one"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Add", ["r", "m"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], [one])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A long-tailed tensor (Student's t, 3 degrees of freedom): 60 rows of FEATURES values."""
    model = _identity_model(tmp_path_factory.mktemp("skewed") / "identity.onnx")
    values = np.random.default_rng(1).standard_t(df=3, size=(60, FEATURES)).astype(np.float32)
    return model, values


def _amax(model: Path, values: np.ndarray, tensor: str = "m", **recipe: object) -> float:
    ranges = calibrate(model, values, "x", Int8Recipe(flavour="tensorrt", **recipe), "data")  # type: ignore[arg-type]
    return ranges.amax()[tensor]


def test_three_methods_give_the_ranges_they_are_named_for_on_a_long_tail(
    skewed: tuple[Path, np.ndarray],
) -> None:
    model, values = skewed
    magnitudes = np.abs(values)
    minmax = _amax(model, values, method="minmax")
    percentile = _amax(model, values, method="percentile", percentile=99.9)
    entropy = _amax(model, values, method="entropy")
    bin_width = minmax / 2048
    print(f"long tail: minmax {minmax:.3f}, percentile 99.9 {percentile:.3f}, entropy {entropy:.3f}")
    assert minmax == pytest.approx(float(magnitudes.max()), rel=1e-6)
    assert abs(percentile - float(np.percentile(magnitudes, 99.9))) <= bin_width
    # Entropy clips the tail: well below the maximum, yet it keeps the bulk of the distribution.
    assert entropy < 0.6 * minmax
    assert float(np.mean(magnitudes > entropy)) < 0.01
    assert len({round(minmax, 4), round(percentile, 4), round(entropy, 4)}) == 3


def test_graph_inputs_keep_their_full_range_with_every_method(skewed: tuple[Path, np.ndarray]) -> None:
    """The input is the preprocessed pixels, not an activation with a tail: clipping it only saturates data."""
    model, values = skewed
    full = float(np.abs(values).max())
    for method in CALIBRATION_METHODS:
        assert _amax(model, values, tensor="x", method=method) == pytest.approx(full, rel=1e-6)
    assert _amax(model, values, method="entropy") < 0.6 * full  # the same values inside the graph are clipped


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_ranges_do_not_depend_on_the_calibration_batch_size(
    skewed: tuple[Path, np.ndarray], method: str
) -> None:
    model, values = skewed
    ranges = {batch: _amax(model, values, method=method, batch_size=batch) for batch in (1, 7, 60)}
    assert ranges[1] == ranges[7] == ranges[60], ranges


@pytest.fixture(scope="module")
def digits_calibration(trained_digits) -> tuple[Path, np.ndarray]:  # type: ignore[no-untyped-def]
    preprocessing, channels = preprocessing_for(trained_digits.onnx_path)
    images = load_image_set(trained_digits.calib_dir, preprocessing, channels).images
    return trained_digits.onnx_path, images


def test_digits_calibration_differs_by_method_and_not_by_batch(digits_calibration) -> None:  # type: ignore[no-untyped-def]
    model, images = digits_calibration
    amax = {
        method: calibrate(model, images, "input", Int8Recipe(flavour="tensorrt", method=method), "d").amax()
        for method in CALIBRATION_METHODS
    }
    tensors = sorted(amax["minmax"])
    for first, second in [("minmax", "entropy"), ("minmax", "percentile"), ("entropy", "percentile")]:
        differing = [name for name in tensors if abs(amax[first][name] - amax[second][name]) > 1e-6]
        assert differing, f"{first} and {second} gave the same ranges"
    # Entropy and percentile only ever clip: never above the observed maximum.
    assert all(amax["entropy"][name] <= amax["minmax"][name] + 1e-6 for name in tensors)
    small_batches = calibrate(
        model, images, "input", Int8Recipe(flavour="tensorrt", method="entropy", batch_size=5), "d"
    ).amax()
    worst = max(abs(small_batches[name] - amax["entropy"][name]) / amax["minmax"][name] for name in tensors)
    assert worst <= 1 / 2048  # within one histogram bin (kernels may round one value differently by batch)


def test_cache_key_holds_the_method_parameters(digits_calibration, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source, images = digits_calibration
    model = tmp_path / "digits.onnx"
    shutil.copy(source, model)
    recipe = Int8Recipe(flavour="cpu", method="entropy")
    assert calibrate_cached(model, images, "input", recipe, "d")[1] is False
    cached = CalibrationRanges.read(calibration_cache_path(model, recipe))
    assert cached is not None and cached.parameters == recipe.calibration_parameters()
    assert cached.parameters["histogram_bins"] == 2048 and cached.parameters["quantized_bins"] == 128
    assert calibrate_cached(model, images, "input", recipe, "d")[1] is True
    finer = Int8Recipe(flavour="cpu", method="entropy", histogram_bins=4096)
    assert calibrate_cached(model, images, "input", finer, "d")[1] is False


def test_the_manifest_names_the_method_with_its_parameters(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    options = BuildOptions(
        precision="int8",
        backend="onnxruntime",
        target="tensorrt",
        calib_method="percentile",
        percentile=99.99,
        calib_dir=trained_digits.calib_dir,
    )
    result = build_engine(model, options)
    recipe = read_manifest(result.artifact).recipe
    assert recipe["calibration_parameters"] == {
        "method": "percentile",
        "symmetric": True,
        "percentile": 99.99,
        "histogram_bins": 2048,
        "statistic": "absolute value",
    }
