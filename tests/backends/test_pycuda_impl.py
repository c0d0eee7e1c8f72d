"""The pycuda implementation's own logic on a fake ``pycuda.driver`` (no GPU, no pycuda here): one-line errors,
non-blocking streams, no graphs (said at WARNING), and the primary-context release that pops what pycuda leaves
(through ``cuCtxPopCurrent_v2``, its result checked)."""

from __future__ import annotations

import logging
import sys
import threading
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pytest

from sedeploy.backends import cuda_memory
from sedeploy.backends.cuda_memory import choice, graphs, pycuda_impl


class FakeLibcuda:
    """``libcuda`` through ctypes: the driver's context stack of the calling thread."""

    def __init__(self) -> None:
        self.stack: list[int] = []
        self.pop_result = 0

    def cuCtxGetCurrent(self, pointer: Any) -> int:
        pointer._obj.value = self.stack[-1] if self.stack else None
        return 0

    def cuCtxPopCurrent_v2(self, pointer: Any) -> int:
        # Only the versioned symbol: calling the legacy cuCtxPopCurrent fails here with AttributeError.
        if self.pop_result:
            return self.pop_result
        pointer._obj.value = self.stack.pop()
        return 0


def fake_pycuda(library: FakeLibcuda) -> ModuleType:
    """pycuda.driver as its C++ source behaves for a primary context: detach() releases without popping."""
    module = ModuleType("pycuda.driver")
    log: list[str] = []

    class Error(Exception):
        pass

    class Context:
        stack: ClassVar[list[Any]] = []

        def __init__(self) -> None:
            self.handle = 0xC0FFEE
            self.released = 0

        def push(self) -> None:
            library.stack.append(self.handle)
            Context.stack.append(self)

        def detach(self) -> None:
            log.append("detach")
            self.released += 1
            if Context.stack and Context.stack[-1] is self:
                Context.stack.pop()  # pycuda's own stack; the driver's keeps the context

        @staticmethod
        def pop() -> None:
            library.stack.pop()
            Context.stack.pop()

        @staticmethod
        def synchronize() -> None:
            log.append("synchronize")

    class Device:
        @staticmethod
        def count() -> int:
            return 1

        def __init__(self, index: int) -> None:
            if index != 0:
                raise Error("cuDeviceGet failed: invalid device ordinal")

        def compute_capability(self) -> tuple[int, int]:
            return 8, 7

        def name(self) -> str:
            return "Orin"

        def total_memory(self) -> int:
            return 2**34

        def retain_primary_context(self) -> Context:
            module.context = Context()  # type: ignore[attr-defined]
            return module.context  # type: ignore[attr-defined]

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            self.flags = flags
            self.handle = 0x5000

    def mem_alloc(nbytes: int) -> Any:
        raise Error("cuMemAlloc failed: out of memory")

    module.Error = Error  # type: ignore[attr-defined]
    module.Context = Context  # type: ignore[attr-defined]
    module.Device = Device  # type: ignore[attr-defined]
    module.Stream = Stream  # type: ignore[attr-defined]
    module.mem_alloc = mem_alloc  # type: ignore[attr-defined]
    module.init = lambda: None  # type: ignore[attr-defined]
    module.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)  # type: ignore[attr-defined]
    module.log = log  # type: ignore[attr-defined]
    return module


@pytest.fixture
def pycuda(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, FakeLibcuda]:
    library = FakeLibcuda()
    module = fake_pycuda(library)
    package = ModuleType("pycuda")
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", module)
    monkeypatch.setattr(pycuda_impl, "_libcuda", lambda: library)
    monkeypatch.delenv("SEDEPLOY_CUDA", raising=False)
    monkeypatch.setattr(choice, "_apis", {})
    monkeypatch.setattr(choice, "_default", None)
    monkeypatch.setattr(graphs, "_warned", set())
    return module, library


def test_pycuda_is_picked_and_describes_the_device(pycuda: tuple[ModuleType, FakeLibcuda]) -> None:
    assert isinstance(cuda_memory.api(), pycuda_impl.PycudaApi)
    assert cuda_memory.device_info(0) == cuda_memory.DeviceInfo(0, "Orin", "8.7", 2**34)
    with pytest.raises(cuda_memory.CudaError, match="device 3 does not exist"):
        cuda_memory.device_info(3)


def test_close_leaves_no_context_on_the_thread(pycuda: tuple[ModuleType, FakeLibcuda]) -> None:
    module, library = pycuda
    library.stack.append(0xAAAA)  # whatever was current before (PyTorch's, say)
    context = cuda_memory.CudaContext(0)
    with context:
        assert library.stack[-1] == 0xC0FFEE
    context.free()
    assert module.context.released == 1  # type: ignore[attr-defined]
    assert library.stack == [0xAAAA], "pycuda's detach() left the released context current"


def test_a_failed_pop_after_release_is_one_cuda_error(pycuda: tuple[ModuleType, FakeLibcuda]) -> None:
    _, library = pycuda
    context = cuda_memory.CudaContext(0)
    library.pop_result = 201  # CUDA_ERROR_INVALID_CONTEXT
    with pytest.raises(cuda_memory.CudaError, match="cuCtxPopCurrent_v2 failed with CUresult 201") as caught:
        context.free()
    assert "\n" not in str(caught.value)


def test_close_from_another_thread_does_not_touch_pycuda(pycuda: tuple[ModuleType, FakeLibcuda]) -> None:
    module, library = pycuda
    context = cuda_memory.CudaContext(0)
    closer = threading.Thread(target=context.free)
    closer.start()
    closer.join()
    assert "detach" not in module.log  # type: ignore[attr-defined]
    assert library.stack == []


def test_pycuda_errors_are_one_line_cuda_errors(pycuda: tuple[ModuleType, FakeLibcuda]) -> None:
    with cuda_memory.CudaContext(0), pytest.raises(cuda_memory.CudaError) as caught:
        cuda_memory.DeviceBuffer(64)
    assert "cannot allocate 64 bytes of GPU memory" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_streams_are_non_blocking_and_graphs_refused_at_warning(
    pycuda: tuple[ModuleType, FakeLibcuda], caplog: pytest.LogCaptureFixture
) -> None:
    with cuda_memory.CudaContext(0), cuda_memory.Stream() as stream, caplog.at_level(logging.WARNING):
        assert stream.native.flags == 1
        assert cuda_memory.CudaGraph.capture(stream, lambda: None) is None
    assert any("no released pycuda can capture CUDA graphs" in record.message for record in caplog.records)


def test_current_context_reads_the_driver(pycuda: tuple[ModuleType, FakeLibcuda]) -> None:
    _, library = pycuda
    implementation = cuda_memory.api()
    assert implementation.current_context() == 0
    library.stack.append(0x1234)
    assert implementation.current_context() == 0x1234
