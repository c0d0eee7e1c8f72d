"""The CUDA memory module's selection, its cuda-python import shim, and the cuda-python implementation end to end.

The driver is a fake (no GPU here, and cuda-python is not installed); everything
above it, sedeploy's selection, checked calls, buffers, copies, contexts and graph
capture, is the real code.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from cuda_fakes import FakeDriver, install_cuda_python

from sedeploy.backends import cuda_memory
from sedeploy.backends.cuda_memory import choice, cuda_python_impl, graphs
from sedeploy.errors import ConfigError, MissingDependencyError


@pytest.fixture(autouse=True)
def _fresh_implementations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice, "_apis", {})
    monkeypatch.setattr(choice, "_default", None)
    monkeypatch.setattr(graphs, "_warned", set())


# Selection.


def _fake_pycuda(monkeypatch: pytest.MonkeyPatch) -> None:
    package = ModuleType("pycuda")
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", ModuleType("pycuda.driver"))


def test_pycuda_is_chosen_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cuda_python(monkeypatch)
    _fake_pycuda(monkeypatch)
    assert cuda_memory.choose_implementation({}) == "pycuda"


def test_cuda_python_is_chosen_without_pycuda(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cuda_python(monkeypatch, layout="12")
    assert cuda_memory.choose_implementation({}) == "cuda-python"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("pycuda", "pycuda"), (" CUDA-Python ", "cuda-python"), ("cuda_python", "cuda-python")],
)
def test_environment_variable_chooses(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    _fake_pycuda(monkeypatch)
    assert cuda_memory.choose_implementation({"SEDEPLOY_CUDA": value}) == expected


def test_unknown_environment_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SEDEPLOY_CUDA='cupy' is not one of pycuda, cuda-python"):
        cuda_memory.choose_implementation({"SEDEPLOY_CUDA": "cupy"})


def test_neither_installed_names_both_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "pycuda",
        "pycuda.driver",
        "cuda",
        "cuda.bindings",
        "cuda.bindings.driver",
        "cuda.cuda",
        "cuda.cudart",
    ):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError) as caught:
        cuda_memory.choose_implementation({})
    message = str(caught.value)
    assert "\n" not in message
    assert "sedeploy[tensorrt]" in message and "sedeploy[cuda]" in message


def test_env_choice_of_a_missing_package_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.driver", "cuda.cuda", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("SEDEPLOY_CUDA", "cuda-python")
    with pytest.raises(MissingDependencyError, match=r"pip install 'sedeploy\[cuda\]'"):
        cuda_memory.api()


def test_the_implementation_is_resolved_once_not_per_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_cuda_python(monkeypatch)
    monkeypatch.delenv("SEDEPLOY_CUDA")  # the default choice: tries pycuda (absent here) first
    attempts: list[str] = []
    real_import = choice.importlib.import_module

    def counting_import(name: str, package: str | None = None) -> object:
        attempts.append(name)
        return real_import(name, package)

    monkeypatch.setattr(choice.importlib, "import_module", counting_import)
    layouts = [cuda_memory.TensorLayout("x", "float32", (4, 3), is_input=True)]
    with cuda_memory.CudaContext(0), cuda_memory.BufferSet(layouts) as buffers:
        for step in range(50):
            buffers.host["x"].array[...] = step
            buffers.upload("x", 4)
            buffers.host["x"].array[...] = -1
            buffers.download("x", 4)
            buffers.stream.synchronize()
            assert (buffers.host["x"].array == step).all()
        assert buffers.implementation is cuda_memory.api()
    assert attempts.count("pycuda.driver") == 1, (
        f"pycuda was looked for {attempts.count('pycuda.driver')} times"
    )
    assert fake.names().count("cuMemcpyHtoDAsync") == 50
    monkeypatch.setenv("SEDEPLOY_CUDA", "cuda-python")  # a new choice is made when the variable changes
    assert cuda_memory.api() is buffers.implementation and attempts.count("pycuda.driver") == 1


def test_copies_between_two_implementations_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cuda_python(monkeypatch)
    with cuda_memory.CudaContext(0), cuda_memory.DeviceBuffer(16) as device, cuda_memory.Stream() as stream:
        other = cuda_python_impl.CudaPythonApi()
        monkeypatch.setattr(stream, "_api", other)
        with pytest.raises(cuda_memory.CudaError, match="one SEDEPLOY_CUDA"):
            cuda_memory.copy_to_device_async(device, np.zeros(4, np.float32), stream)


# The import shim.


@pytest.mark.parametrize(("layout", "driver_name"), [("13", "cuda.bindings.driver"), ("12", "cuda.cuda")])
def test_shim_finds_both_layouts(monkeypatch: pytest.MonkeyPatch, layout: str, driver_name: str) -> None:
    fake = install_cuda_python(monkeypatch, layout=layout)
    driver, runtime, found = cuda_python_impl.load_modules()
    assert driver is fake and found == driver_name
    assert hasattr(runtime, "cudaGetLastError")
    implementation = cuda_memory.api()
    assert isinstance(implementation, cuda_python_impl.CudaPythonApi)
    assert implementation.layout == driver_name
    assert cuda_memory.device_info(0) == cuda_memory.DeviceInfo(0, "NVIDIA Fake GPU", "8.6", 80 * 2**30)


def test_bindings_layout_is_preferred_when_both_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cuda_python(monkeypatch, layout="13")
    old = FakeDriver("cuda.cuda")
    monkeypatch.setitem(sys.modules, "cuda.cuda", old)
    monkeypatch.setitem(sys.modules, "cuda.cudart", ModuleType("cuda.cudart"))
    driver, _, found = cuda_python_impl.load_modules()
    assert found == "cuda.bindings.driver" and driver is not old


def test_driver_that_cannot_load_is_one_cuda_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_cuda_python(monkeypatch)

    def no_library(flags: int) -> None:
        raise RuntimeError('"cuda" is an NVIDIA driver library and can only be found via system search')

    monkeypatch.setattr(fake, "cuInit", no_library)
    with pytest.raises(cuda_memory.CudaError, match="nvidia-smi") as caught:
        cuda_memory.api()
    assert "\n" not in str(caught.value)


# cuda-python end to end on the fake driver.


def test_round_trip_through_pinned_and_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_cuda_python(monkeypatch)
    layouts = [
        cuda_memory.TensorLayout("x", "float32", (4, 3), is_input=True),
        cuda_memory.TensorLayout("y", "float32", (4, 3), is_input=False),
    ]
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    with cuda_memory.CudaContext(0) as context, cuda_memory.BufferSet(layouts) as buffers:
        buffers.host["x"].array[...] = values
        buffers.upload("x", 3)
        fake.write(buffers.device["y"].ptr, fake.read(buffers.device["x"].ptr, np.float32, 12) * 2)
        buffers.download("y", 3)
        buffers.stream.synchronize()
        result = buffers.host["y"].rows(3).copy()
        assert buffers.host["x"].array.ctypes.data in fake.host  # the array is the pinned allocation itself
    np.testing.assert_array_equal(result, values[:3] * 2)
    context.free()
    assert fake.retained == 0
    assert fake.cuCtxGetCurrent()[1] == 0, "a context was left current on this thread"
    names = fake.names()
    assert names.count("cuMemFree") == 2 and names.count("cuMemFreeHost") == 2
    flags = [args[1] for name, args in fake.log if name == "cuStreamCreate"]
    assert flags == [1], "streams must be non-blocking"


def test_buffer_set_waits_for_its_stream_before_freeing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_cuda_python(monkeypatch)
    context = cuda_memory.CudaContext(0)
    with context:
        buffers = cuda_memory.BufferSet([cuda_memory.TensorLayout("x", "float32", (2,), is_input=True)])
        fake.log.clear()
        buffers.free()
    context.free()
    names = fake.names()
    assert names.index("cuStreamSynchronize") < names.index("cuMemFree") < names.index("cuStreamDestroy")


def test_failed_calls_are_one_line_cuda_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_cuda_python(monkeypatch)
    fake.fail.add("cuMemAlloc")
    with cuda_memory.CudaContext(0), pytest.raises(cuda_memory.CudaError) as caught:
        cuda_memory.DeviceBuffer(1024)
    message = str(caught.value)
    assert "cannot allocate 1024 bytes of GPU memory" in message and "CUDA_ERROR_FAKE" in message
    assert "\n" not in message


def test_copy_larger_than_the_device_buffer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cuda_python(monkeypatch)
    with (
        cuda_memory.CudaContext(0),
        cuda_memory.DeviceBuffer(8) as device,
        cuda_memory.Stream() as stream,
        pytest.raises(cuda_memory.CudaError, match="cannot copy 16 bytes"),
    ):
        cuda_memory.copy_to_device_async(device, np.zeros(4, np.float32), stream)


def test_graph_captures_in_thread_local_mode_and_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_cuda_python(monkeypatch)
    with (
        cuda_memory.CudaContext(0),
        cuda_memory.BufferSet([cuda_memory.TensorLayout("x", "float32", (4,), is_input=True)]) as buffers,
    ):
        graph = cuda_memory.CudaGraph.capture(buffers.stream, lambda: buffers.upload("x", 4))
        assert graph is not None
        assert not fake.read(buffers.device["x"].ptr, np.float32, 4).any(), "capture must not run the work"
        for value in (1.0, 2.5):
            buffers.host["x"].array[...] = value
            graph.launch(buffers.stream)
            np.testing.assert_array_equal(fake.read(buffers.device["x"].ptr, np.float32, 4), value)
        graph.free()
    modes = [args[1] for name, args in fake.log if name == "cuStreamBeginCapture"]
    assert modes == [1]  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
    assert fake.names().count("cuGraphDestroy") == 1 and fake.names().count("cuGraphExecDestroy") == 1


def test_failed_capture_ends_capture_clears_the_error_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = install_cuda_python(monkeypatch)

    def enqueue() -> None:
        raise RuntimeError("enqueue failed")

    with cuda_memory.CudaContext(0), cuda_memory.Stream() as stream, caplog.at_level(logging.WARNING):
        assert cuda_memory.CudaGraph.capture(stream, enqueue) is None
        assert stream.native.capture is None, "the stream was left capturing"
    names = fake.names()
    assert names.index("cuStreamEndCapture") < names.index("cudaGetLastError")
    assert any("running without CUDA graphs" in record.message for record in caplog.records)


def test_capture_refused_by_the_driver_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = install_cuda_python(monkeypatch)
    fake.fail.add("capture")
    with cuda_memory.CudaContext(0), cuda_memory.Stream() as stream, caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert cuda_memory.CudaGraph.capture(stream, lambda: None) is None
    assert sum("CUDA graph capture failed" in record.message for record in caplog.records) == 1


def test_events_time_gpu_work(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cuda_python(monkeypatch)
    with cuda_memory.CudaContext(0), cuda_memory.Stream() as stream:
        start, end = cuda_memory.Event(), cuda_memory.Event()
        start.record(stream)
        end.record(stream)
        end.synchronize()
        assert end.milliseconds_since(start) == 1.5
        start.free()
        end.free()


def test_pycuda_says_why_it_has_no_graphs() -> None:
    from sedeploy.backends.cuda_memory.pycuda_impl import PycudaApi

    reason = PycudaApi.graph_unsupported(object.__new__(PycudaApi))
    assert reason is not None and "SEDEPLOY_CUDA=cuda-python" in reason


def _driver_calls() -> set[str]:
    """Every driver function the cuda-python implementation calls, read from its source."""
    source = Path(cuda_python_impl.__file__).read_text()
    return set(re.findall(r'"(cu[A-Z]\w+)"', source))


def test_the_fake_driver_offers_every_call_the_implementation_makes() -> None:
    calls = _driver_calls()
    assert {"cuMemHostAlloc", "cuStreamBeginCapture", "cuGraphInstantiate"} <= calls
    assert not [name for name in sorted(calls) if not hasattr(FakeDriver, name)]


def test_installed_cuda_python_has_every_call_the_implementation_makes() -> None:
    if not cuda_memory.cuda_python_importable():
        pytest.skip(
            "cuda-python is not installed here (pip install 'sedeploy[cuda]'); the fake driver stands in"
        )
    driver, runtime, _ = cuda_python_impl.load_modules()
    assert not [name for name in sorted(_driver_calls()) if not hasattr(driver, name)]
    assert hasattr(driver.CUstreamCaptureMode, "CU_STREAM_CAPTURE_MODE_THREAD_LOCAL")
    assert hasattr(driver.CUstream_flags, "CU_STREAM_NON_BLOCKING")
    assert hasattr(runtime, "cudaGetLastError")
