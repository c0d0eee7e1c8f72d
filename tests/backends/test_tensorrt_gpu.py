"""GPU tests of the pinned-memory layer (on pycuda and on cuda-python), the PyTorch CUDA runner and the TensorRT
backend; they skip, with the reason, where CUDA, the CUDA package or TensorRT is missing (conftest skips every
``gpu`` test when torch sees no CUDA)."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sedeploy import create_model
from sedeploy.artifacts.manifest import read_manifest, write_manifest
from sedeploy.backends import cuda_memory
from sedeploy.compare import compare_logits

pytestmark = pytest.mark.gpu

IMAGE = (3, 64, 64)
CLASSES = 10
MAX_BATCH = 16
FP32_MIN_COSINE = 0.9995
"""TensorRT may run FP32 convolutions in TF32 on Ampere and newer, so FP32 parity is slightly looser than export's."""


@pytest.fixture(params=cuda_memory.IMPLEMENTATIONS)
def pycuda_driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each CUDA implementation that is installed here, selected through SEDEPLOY_CUDA."""
    name = request.param
    if name == "pycuda":
        pytest.importorskip(
            "pycuda.driver", reason="pycuda is not installed: pip install 'sedeploy[tensorrt]'"
        )
    elif not cuda_memory.cuda_python_importable():
        pytest.skip("cuda-python is not installed: pip install 'sedeploy[cuda]'")
    monkeypatch.setenv(cuda_memory.ENV_VAR, name)
    return str(name)


@pytest.fixture(scope="module")
def tensorrt() -> Any:
    module = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed: pip install 'sedeploy[tensorrt]'"
    )
    try:
        cuda_memory.choose_implementation()
    except Exception as error:
        pytest.skip(str(error))
    return module


class _DeviceArray:
    """Exposes a device pointer to PyTorch through ``__cuda_array_interface__`` (no copy)."""

    def __init__(self, pointer: int, shape: tuple[int, ...], typestr: str = "<f4") -> None:
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (pointer, False),
            "version": 2,
        }


def test_cuda_memory_round_trip_through_torch(pycuda_driver: Any) -> None:
    rng = np.random.default_rng(0)
    host_input = rng.standard_normal((4, 8)).astype(np.float32)
    layouts = [
        cuda_memory.TensorLayout("x", "float32", (4, 8), is_input=True),
        cuda_memory.TensorLayout("y", "float32", (4, 8), is_input=False),
    ]
    with cuda_memory.CudaContext(0) as context, cuda_memory.BufferSet(layouts) as buffers:
        buffers.host["x"].array[...] = host_input
        buffers.upload("x", 3)
        buffers.stream.synchronize()
        source = torch.as_tensor(_DeviceArray(buffers.device["x"].ptr, (4, 8)), device="cuda")
        target = torch.as_tensor(_DeviceArray(buffers.device["y"].ptr, (4, 8)), device="cuda")
        target.copy_(torch.relu(source * 2 + 1))
        torch.cuda.synchronize()
        buffers.download("y", 3)
        buffers.stream.synchronize()
        result = buffers.host["y"].rows(3).copy()
    context.free()
    np.testing.assert_allclose(result, np.maximum(host_input[:3] * 2 + 1, 0), rtol=1e-6)
    assert buffers.freed and context.freed


def test_double_buffer_pipeline_through_torch(pycuda_driver: Any) -> None:
    layouts = [
        cuda_memory.TensorLayout("x", "float32", (2, 5), is_input=True),
        cuda_memory.TensorLayout("y", "float32", (2, 5), is_input=False),
    ]
    batches = [np.full((2, 5), index, dtype=np.float32) for index in range(6)]

    def submit(buffers: cuda_memory.BufferSet, batch: np.ndarray) -> None:
        buffers.host["x"].array[...] = batch
        buffers.upload("x", 2)
        buffers.stream.synchronize()
        stream = torch.cuda.ExternalStream(buffers.stream.handle)
        with torch.cuda.stream(stream):
            source = torch.as_tensor(_DeviceArray(buffers.device["x"].ptr, (2, 5)), device="cuda")
            target = torch.as_tensor(_DeviceArray(buffers.device["y"].ptr, (2, 5)), device="cuda")
            target.copy_(source * 3)
        buffers.download("y", 2)

    def collect(buffers: cuda_memory.BufferSet, _: None) -> np.ndarray:
        buffers.stream.synchronize()
        return buffers.host["y"].array.copy()

    context = cuda_memory.CudaContext(0)
    with context, cuda_memory.DoubleBuffer(layouts) as double:
        outputs = list(double.run(batches, submit, collect))
    context.free()
    for index, output in enumerate(outputs):
        np.testing.assert_array_equal(output, np.full((2, 5), 3 * index, dtype=np.float32))


def test_cuda_graph_replays_captured_copies(pycuda_driver: Any) -> None:
    context = cuda_memory.CudaContext(0)
    with context, cuda_memory.BufferSet([cuda_memory.TensorLayout("x", "float32", (8,), True)]) as buffers:
        graph = cuda_memory.CudaGraph.capture(buffers.stream, lambda: buffers.upload("x", 8))
        if graph is None:
            assert pycuda_driver == "pycuda", "cuda-python must capture graphs"
            pytest.skip("no released pycuda can capture CUDA graphs")
        for value in (1.0, 2.5):
            buffers.host["x"].array[...] = value
            graph.launch(buffers.stream)
            buffers.stream.synchronize()
            device = torch.as_tensor(_DeviceArray(buffers.device["x"].ptr, (8,)), device="cuda")
            assert torch.all(device == value)
        graph.free()
    context.free()


def test_context_stack_is_as_before_after_close(pycuda_driver: Any) -> None:
    implementation = cuda_memory.api()
    before = implementation.current_context()
    context = cuda_memory.CudaContext(0)
    with context, cuda_memory.DeviceBuffer(64):
        assert implementation.current_context() != 0
    context.free()
    assert implementation.current_context() == before


def test_close_from_another_thread_frees_nothing_in_use(pycuda_driver: Any) -> None:
    context = cuda_memory.CudaContext(0)
    errors: list[BaseException] = []

    def release() -> None:
        try:
            context.free()
        except BaseException as error:
            errors.append(error)

    with context, cuda_memory.DeviceBuffer(64):
        pass
    thread = threading.Thread(target=release)
    thread.start()
    thread.join()
    assert not errors


# The PyTorch runner on CUDA.


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("se_resnet18", num_classes=CLASSES, img_size=IMAGE[1]).eval()


def _torch_runner(model: torch.nn.Module, **options: Any) -> Any:
    from sedeploy.backends.torch import TorchRunner

    copy = create_model("se_resnet18", num_classes=CLASSES, img_size=IMAGE[1]).eval()
    copy.load_state_dict(model.state_dict())
    return TorchRunner(copy, device="cuda", max_batch=MAX_BATCH, **options)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda_runner_matches_cpu(small_model: torch.nn.Module, precision: str) -> None:
    from sedeploy.backends.torch import CUDA_MIN_COSINE

    min_cosine = CUDA_MIN_COSINE[precision]
    batch = _images(2 * MAX_BATCH + 3)
    with _torch_runner(small_model, precision=precision) as runner:
        output = runner(batch)
        streamed = np.concatenate(list(runner.stream([batch[:5], batch[5:]])))
        assert runner.time_compute is not None
        seconds = runner.time_compute(8, iterations=3)
    check = compare_logits(_reference(small_model, batch), output)
    assert check.passed(min_cosine=min_cosine), check.to_text()
    np.testing.assert_allclose(streamed, output, rtol=1e-2, atol=1e-2)
    assert len(seconds) == 3 and all(value > 0 for value in seconds)


def test_torch_cuda_graph_really_captures(small_model: torch.nn.Module) -> None:
    batch = _images(5)
    with _torch_runner(small_model) as direct:
        expected = direct(batch)
    with _torch_runner(small_model, cuda_graph=True, slots=1) as graphed:
        for _ in range(3):
            np.testing.assert_allclose(graphed(batch), expected, rtol=1e-4, atol=1e-4)
        executor = graphed._executor
        assert executor is not None
        assert executor.slots[0].graph.captures == 1 and executor.slots[0].graph.replays == 2


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_torch_cuda_two_threads_with_different_batches(
    small_model: torch.nn.Module, cuda_graph: bool
) -> None:
    with _torch_runner(small_model, cuda_graph=cuda_graph) as runner:
        sizes = {0: [1, 7, 3, 16], 1: [16, 2, 9, 5]}
        expected = {size: runner(_images(size, seed=size)) for size in {*sizes[0], *sizes[1]}}
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for size in sizes[worker] * 3:
                    np.testing.assert_allclose(
                        runner(_images(size, seed=size)), expected[size], rtol=1e-4, atol=1e-4
                    )
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(worker,)) for worker in sizes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        executor = runner._executor
        assert executor is not None
        replays = sum(slot.graph.replays for slot in executor.slots)
    assert not errors
    assert (replays > 0) == cuda_graph


# TensorRT.


@pytest.fixture(scope="module")
def model_and_onnx(tensorrt: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    from sedeploy.export import export_onnx

    torch.manual_seed(0)
    model = create_model("se_resnet18", num_classes=CLASSES, img_size=IMAGE[1]).eval()
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    export_onnx(model, img_size=IMAGE[1], max_batch=MAX_BATCH, output=path, check=False)
    return model, path


@pytest.fixture(scope="module")
def fp32_engine(model_and_onnx: tuple[torch.nn.Module, Path]) -> Path:
    from sedeploy.backends.tensorrt import build_engine

    _, onnx_path = model_and_onnx
    engine_path = onnx_path.with_name("model.engine")
    phases: list[str] = []
    result = build_engine(
        onnx_path,
        engine_path,
        profile=f"1:4:{MAX_BATCH}",
        timing_cache=onnx_path.with_name("timing.cache"),
        progress=lambda phase, done, total: phases.append(phase),
    )
    assert result.engine_path == engine_path and engine_path.is_file()
    assert onnx_path.with_name("timing.cache").is_file()
    return engine_path


def _reference(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *IMAGE)).astype(np.float32)


def test_manifest_describes_engine(fp32_engine: Path, tensorrt: Any) -> None:
    manifest = read_manifest(fp32_engine)
    assert manifest.artifact_format == "tensorrt_plan" and manifest.precision == "fp32"
    assert manifest.engine is not None
    assert manifest.engine["tensorrt_version"] == tensorrt.__version__
    assert manifest.engine["profile"] == {"min": 1, "opt": 4, "max": MAX_BATCH}
    assert manifest.device["compute_capability"] and manifest.device["gpu_name"]
    manifest.check_artifact(fp32_engine)


@pytest.mark.parametrize("batch_size", [1, 5, MAX_BATCH])
def test_fp32_parity_with_pytorch(
    fp32_engine: Path, model_and_onnx: tuple[torch.nn.Module, Path], batch_size: int
) -> None:
    from sedeploy.backends.tensorrt import TensorRTRunner

    model, _ = model_and_onnx
    batch = _images(batch_size, seed=batch_size)
    with TensorRTRunner(fp32_engine) as runner:
        assert runner.max_batch == MAX_BATCH
        output = runner(batch)
    assert output.shape == (batch_size, CLASSES)
    check = compare_logits(_reference(model, batch), output)
    assert check.passed(min_cosine=FP32_MIN_COSINE), check.to_text()


def test_batch_bigger_than_max_is_split_and_joined(fp32_engine: Path) -> None:
    from sedeploy.backends.tensorrt import TensorRTRunner

    batch = _images(2 * MAX_BATCH + 3)
    with TensorRTRunner(fp32_engine) as runner:
        whole = runner(batch)
        pieces = np.concatenate([runner(batch[start : start + 7]) for start in range(0, len(batch), 7)])
    np.testing.assert_allclose(whole, pieces, rtol=1e-4, atol=1e-4)


def test_streaming_equals_per_batch(fp32_engine: Path) -> None:
    from sedeploy.backends.tensorrt import TensorRTRunner

    batches = [_images(size, seed=size) for size in (3, MAX_BATCH, 1, MAX_BATCH + 5, 0, 8)]
    with TensorRTRunner(fp32_engine) as runner:
        one_by_one = [runner(batch) for batch in batches]
        streamed = list(runner.stream(batches))
    assert len(streamed) == len(batches)
    for single, piped in zip(one_by_one, streamed, strict=True):
        assert single.shape == piped.shape
        np.testing.assert_allclose(single, piped, rtol=1e-4, atol=1e-4)


def test_two_threads_through_the_pool_match_one(fp32_engine: Path) -> None:
    from sedeploy.backends.tensorrt import TensorRTRunner

    batches = [_images(size, seed=size) for size in (1, 4, 7, MAX_BATCH, 9, 2)]
    with TensorRTRunner(fp32_engine, contexts=2) as runner:
        expected = [runner(batch) for batch in batches]
        results: dict[tuple[int, int], np.ndarray] = {}
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for index, batch in enumerate(batches):
                    results[(worker, index)] = runner(batch)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(worker,)) for worker in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    for (_, index), output in results.items():
        np.testing.assert_allclose(output, expected[index], rtol=1e-4, atol=1e-4)


def test_cuda_graph_matches_direct_launch(fp32_engine: Path) -> None:
    from sedeploy.backends.tensorrt import TensorRTRunner

    batch = _images(5)
    with TensorRTRunner(fp32_engine) as direct:
        expected = direct(batch)
    with TensorRTRunner(fp32_engine, contexts=1, cuda_graph=True) as graphed:
        for _ in range(4):  # two direct runs (captured after the second), then two replays
            np.testing.assert_allclose(graphed(batch), expected, rtol=1e-4, atol=1e-4)
        if cuda_memory.api().graph_unsupported() is None:
            assert graphed._slots[0].graph.captures == 1 and graphed._slots[0].graph.replays == 2


def test_two_threads_with_different_batch_sizes_at_once(fp32_engine: Path) -> None:
    from sedeploy.backends.tensorrt import TensorRTRunner

    sizes = {0: [1, 7, 3, MAX_BATCH], 1: [MAX_BATCH, 2, 9, 5]}
    with TensorRTRunner(fp32_engine, contexts=2) as runner:
        expected = {size: runner(_images(size, seed=size)) for size in {*sizes[0], *sizes[1]}}
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for size in sizes[worker] * 3:
                    np.testing.assert_allclose(
                        runner(_images(size, seed=size)), expected[size], rtol=1e-4, atol=1e-4
                    )
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(worker,)) for worker in sizes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors


def test_break_then_close_and_close_mid_stream(fp32_engine: Path) -> None:
    from sedeploy.backends.tensorrt import TensorRTRunner

    runner = TensorRTRunner(fp32_engine)
    for _ in runner.stream([_images(MAX_BATCH, seed) for seed in range(4)]):
        break
    runner.close()
    runner = TensorRTRunner(fp32_engine)
    outputs = runner.stream(_images(MAX_BATCH, seed) for seed in range(50))
    next(outputs)
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join()
    with pytest.raises(Exception, match="closed"):
        list(outputs)


def test_close_is_safe_twice_and_a_closed_runner_fails_clearly(fp32_engine: Path) -> None:
    from sedeploy.backends.base import RunnerClosedError
    from sedeploy.backends.tensorrt import TensorRTRunner

    runner = TensorRTRunner(fp32_engine)
    runner.close()
    runner.close()
    with pytest.raises(RunnerClosedError):
        runner(_images(1))


def test_engine_for_another_tensorrt_is_refused_with_rebuild(fp32_engine: Path, tmp_path: Path) -> None:
    from sedeploy.backends.tensorrt import EngineMismatchError, TensorRTRunner

    copy = tmp_path / "other.engine"
    shutil.copyfile(fp32_engine, copy)
    manifest = read_manifest(fp32_engine)
    engine = {**(manifest.engine or {}), "tensorrt_version": "9.0.0"}
    write_manifest(dataclasses.replace(manifest, artifact=copy.name, engine=engine), copy)
    with pytest.raises(EngineMismatchError, match="rebuild"):
        TensorRTRunner(copy)


def test_implicit_int8_builds_on_10x_and_is_refused_on_11x(
    tensorrt: Any, model_and_onnx: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    from sedeploy.backends.tensorrt import TensorRTRunner, build_engine
    from sedeploy.errors import BadInputError

    _, onnx_path = model_and_onnx
    calibration = [_images(4, seed=seed) for seed in range(4)]
    engine_path = tmp_path / "int8.engine"
    kwargs: dict[str, Any] = {
        "profile": "1:4:8",
        "implicit_int8": calibration,
        "calibration_cache": tmp_path / "calibration.cache",
    }
    if not (hasattr(tensorrt, "IInt8EntropyCalibrator2") and hasattr(tensorrt.BuilderFlag, "INT8")):
        with pytest.raises(BadInputError, match=r"10\.x"):
            build_engine(onnx_path, engine_path, **kwargs)
        return
    build_engine(onnx_path, engine_path, **kwargs)
    assert read_manifest(engine_path).precision == "int8"
    assert (tmp_path / "calibration.cache").is_file()
    with TensorRTRunner(engine_path) as runner:
        output = runner(_images(3))
    assert output.shape == (3, CLASSES) and np.all(np.isfinite(output))
