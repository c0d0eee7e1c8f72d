"""sedeploy.load and the runners: dispatch, agreement across backends, bad input, concurrency, images in."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from digits import TrainedDigits
from PIL import Image

import sedeploy
from sedeploy.artifacts.manifest import ManifestError
from sedeploy.artifacts.metadata import ModelMetadata, read_metadata
from sedeploy.backends.base import RunnerClosedError
from sedeploy.backends.onnxruntime import OnnxRuntimeRunner
from sedeploy.backends.torch import TorchRunner
from sedeploy.build import BuildOptions, build_engine
from sedeploy.compare import compare_logits
from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError
from sedeploy.models.checkpoint import save_checkpoint
from sedeploy.runtime import load
from sedeploy.verify import DEFAULT_THRESHOLDS, verify

SMALL_OPTIONS = {"depths": (1, 1, 1), "widths": (16, 32, 64), "in_chans": 1, "num_classes": 10}


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory, trained_digits: TrainedDigits) -> dict[str, Path]:
    """One small SE-ResNet as weights, FP32 ONNX (exported from those weights) and CPU INT8 ONNX."""
    folder = tmp_path_factory.mktemp("small")
    model = sedeploy.create_model("se_preact_resnet", img_size=32, **SMALL_OPTIONS)
    weights = save_checkpoint(model, folder / "small.safetensors")
    onnx_path = sedeploy.export_onnx(
        "se_preact_resnet", weights=weights, img_size=32, output=folder / "small.onnx"
    ).path
    options = BuildOptions(
        precision="int8", backend="onnxruntime", target="cpu", calib_dir=trained_digits.calib_dir
    )
    int8_path = build_engine(onnx_path, options).artifact
    return {"weights": weights, "onnx": onnx_path, "int8": int8_path}


@pytest.mark.cpu_onnxruntime
def test_load_dispatches_on_the_artifact(small_model: dict[str, Path], tmp_path: Path) -> None:
    with load(small_model["onnx"]) as runner:
        assert isinstance(runner, OnnxRuntimeRunner)
        assert runner.provider == "CPUExecutionProvider" and runner.fallback is None
        assert runner.input_spec.shape == (None, 1, 32, 32) and runner.input_spec.max_batch == 32
        assert runner.metadata is not None and runner.metadata.arch == "se_preact_resnet"
    with pytest.raises(ConfigError, match="no training record"):  # its input size would be a guess
        load(small_model["weights"])
    metadata = read_metadata(small_model["onnx"])
    with load(small_model["weights"], metadata=metadata) as runner:  # the checkpoint names the architecture
        assert isinstance(runner, TorchRunner) and runner.metadata == metadata
        assert runner.metadata.num_classes == 10
    with pytest.raises(ConfigError, match="random_weights=True"):
        load("se_preact_resnet", model_options=SMALL_OPTIONS)
    with load("se_preact_resnet", model_options=SMALL_OPTIONS, max_batch=4, random_weights=True) as runner:
        assert isinstance(runner, TorchRunner) and runner.input_spec.max_batch == 4
    # Every runner refuses a file of junk bytes, so an error alone shows nothing: the suffix names the
    # backend, and only the TensorRT runner insists on a manifest (checked before it needs TensorRT).
    for name, backend in (
        ("model.engine", "tensorrt"),
        ("model.plan", "tensorrt"),
        ("model.xml", "openvino"),
    ):
        (tmp_path / name).write_bytes(b"not a plan")
        with pytest.raises(ConfigError, match=f"is run by {backend}, not onnxruntime"):
            load(tmp_path / name, backend="onnxruntime")
    with pytest.raises(ManifestError, match=r"model\.engine has no manifest"):
        load(tmp_path / "model.engine")
    no_bin_or_no_openvino = (BadInputError, MissingDependencyError)
    with pytest.raises(no_bin_or_no_openvino, match=r"(?i)openvino"):
        load(tmp_path / "model.xml")
    with pytest.raises(ConfigError, match="takes device, threads"):
        load(small_model["onnx"], contexts=2)
    with pytest.raises(ConfigError, match="not tensorrt"):
        load(small_model["onnx"], backend="tensorrt")
    with pytest.raises(BadInputError, match="does not exist"):
        load(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="unknown ONNX Runtime device"):
        load(small_model["onnx"], device="tpu")
    with pytest.raises(
        MissingDependencyError, match="sedeploy\\[gpu\\]"
    ):  # this CPU build has no CUDA provider
        load(small_model["onnx"], device="cuda")


def test_pytorch_onnxruntime_fp32_and_int8_agree_within_thresholds(
    small_model: dict[str, Path], trained_digits: TrainedDigits
) -> None:
    images = trained_digits.test_images[:64]
    metadata = read_metadata(small_model["onnx"])
    with (
        load(small_model["weights"], metadata=metadata) as torch_runner,
        load(small_model["onnx"]) as fp32_runner,
        load(small_model["int8"]) as int8_runner,
    ):
        assert isinstance(torch_runner, TorchRunner) and torch_runner.weights_match is True
        reference = torch_runner(images)
        fp32 = compare_logits(reference, fp32_runner(images))
        int8 = compare_logits(reference, int8_runner(images))
    assert fp32.passed(DEFAULT_THRESHOLDS["fp32"].min_cosine), fp32.to_text()
    assert fp32.max_abs_error < 1e-4
    assert int8.passed(DEFAULT_THRESHOLDS["int8"].min_cosine, min_top1=0.9), int8.to_text()
    assert int8.max_abs_error > fp32.max_abs_error  # the INT8 file really is quantized


def test_verify_against_pytorch_weights(small_model: dict[str, Path], trained_digits: TrainedDigits) -> None:
    # The small model has random weights: parity on unlabelled images like its calibration set passes ...
    # (on uniform-noise inputs its near-uniform logits put the worst INT8 image at cosine 0.976 on a VNNI
    # CPU, the same before and after this session: noise is not what the INT8 ranges were calibrated on)
    report = verify(small_model["int8"], small_model["weights"], data=trained_digits.calib_dir, num=64)
    assert report.passed, report.to_text()
    assert report.reference_runner.startswith("torch") and report.precision == "int8"
    # ... but on labelled digits the reference itself is at chance, and parity with it is no pass.
    labelled = verify(small_model["int8"], small_model["weights"], data=trained_digits.test_dir, num=64)
    assert not labelled.passed and labelled.comparison.min_cosine >= 0.98
    assert any("the reference, not the artifact, is wrong" in failure for failure in labelled.failures)


def test_bad_input_is_handled_as_documented(trained_digits: TrainedDigits) -> None:
    images = trained_digits.test_images[:70]
    with load(trained_digits.onnx_path) as runner:
        expected = runner(images[:8])
        with pytest.raises(BadInputError, match="expects 4 dimensions"):
            runner(images[0])
        with pytest.raises(BadInputError, match=r"expects shape \(N, 1, 32, 32\)"):
            runner(np.repeat(images[:2], 3, axis=1))
        np.testing.assert_allclose(runner(images[:8].astype(np.float64)), expected, rtol=1e-6, atol=1e-6)
        with pytest.raises(BadInputError, match="got strings"):
            runner(np.full((1, 1, 32, 32), "x"))
        with pytest.raises(BadInputError, match="preprocess"):
            runner((images[:1] * 255).astype(np.uint8))
        empty = runner(np.zeros((0, 1, 32, 32), dtype=np.float32))
        assert empty.shape == (0, 10) and empty.dtype == np.float32
        big = runner(images)  # 70 > max batch 32: run as 32 + 32 + 6
        assert big.shape == (70, 10)
        np.testing.assert_allclose(
            big, np.concatenate([runner(images[i : i + 1]) for i in range(70)]), atol=1e-4
        )
        poisoned = images[:4].copy()
        poisoned[1, 0, 5, 5] = np.nan
        out = runner(poisoned)  # allowed: NaN is the caller's data, and verify reports it
        assert np.isnan(out[1]).all() and np.isfinite(np.delete(out, 1, axis=0)).all()


def test_concurrent_calls_match_single_threaded_results(trained_digits: TrainedDigits) -> None:
    rng = np.random.default_rng(0)
    images = trained_digits.test_images
    calls = [images[rng.choice(len(images), size=1 + index % 4)] for index in range(8 * 50)]
    with load(trained_digits.onnx_path) as runner:
        alone = [runner(batch) for batch in calls]
        seen_threads = set()

        def call(index: int) -> np.ndarray:
            seen_threads.add(threading.get_ident())
            return runner(calls[index])

        with ThreadPoolExecutor(max_workers=8) as pool:
            together = list(pool.map(call, range(len(calls))))
    assert len(seen_threads) > 1
    for index, (single, concurrent) in enumerate(zip(alone, together, strict=True)):
        np.testing.assert_array_equal(concurrent, single, err_msg=f"call {index}")


def test_preprocess_and_classify_take_paths_pil_images_and_arrays(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    path = sorted((trained_digits.test_dir / "7").iterdir())[0]
    gray = Image.open(path).convert("L")
    colour = gray.convert("RGB")
    with load(trained_digits.onnx_path) as runner:
        from_path = runner.preprocess(path)
        assert from_path.shape == (1, 1, 32, 32) and from_path.dtype == np.float32
        for other in (gray, colour, np.asarray(gray), np.asarray(colour)):
            np.testing.assert_allclose(runner.preprocess([other]), from_path, atol=1e-2)
        results = runner.classify([path, str(path)], top_k=3)
        with pytest.raises(BadInputError, match="uint8"):
            runner.preprocess(np.zeros((32, 32), dtype=np.float32))
        with pytest.raises(ConfigError, match="top_k"):
            runner.classify(path, top_k=0)
    assert len(results) == 2 and results[0] == results[1]
    first = results[0]
    assert first.label == "7" and len(first.labels) == 3  # the labels recorded at export
    assert list(first.probabilities) == sorted(first.probabilities, reverse=True)
    assert 0 < sum(first.probabilities) <= 1 + 1e-9


def test_closed_runner_refuses_calls_and_closes_twice(trained_digits: TrainedDigits) -> None:
    runner = load(trained_digits.onnx_path)
    runner.close()
    runner.close()
    with pytest.raises(RunnerClosedError, match="closed"):
        runner(trained_digits.test_images[:1])


def test_each_runner_has_its_own_close_state(trained_digits: TrainedDigits) -> None:
    first, second = load(trained_digits.onnx_path), load(trained_digits.onnx_path)
    try:
        assert first._close_lock is not second._close_lock  # one lock per runner, not one per class
        first.close()
        assert first.closed and not second.closed
        assert second(trained_digits.test_images[:1]).shape[0] == 1
    finally:
        first.close()
        second.close()


def test_metadata_round_trips_through_the_manifest_form(trained_digits: TrainedDigits) -> None:
    metadata = read_metadata(trained_digits.onnx_path)
    assert ModelMetadata.from_dict(metadata.to_dict()) == metadata
    with pytest.raises(BadInputError, match="corrupt"):
        ModelMetadata.from_dict({"arch": "x"})
