"""Stand-ins for what cannot exist on a CPU machine: the CUDA driver (as cuda-python shows it), ``torch.cuda``
(as the PyTorch runner's executor uses it) and TensorRT.

Only the GPU is fake. Host memory is real memory, device memory is a bytearray per
allocation, and work "runs" when it is enqueued (in order, as one stream would), except
while a stream captures: then it is recorded into a graph and runs on each launch.
Every call is logged, so tests can check the order of synchronisations and frees.
``benchmarks/gpu_check.py --dry-run`` runs its checks on these same fakes.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

CU_ERROR = 999


class Handle:
    """A driver handle: an integer with identity, as cuda-python's ``CUstream``/``CUcontext`` are."""

    _next = 0x1000

    def __init__(self, kind: str) -> None:
        Handle._next += 0x10
        self.value = Handle._next
        self.kind = kind
        self.capture: list[Callable[[], None]] | None = None

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{self.kind} {self.value:#x}>"


class FakeDriver(ModuleType):
    """``cuda.bindings.driver`` for a machine with one fake GPU; each call returns ``(CUresult, *values)``."""

    def __init__(
        self,
        name: str = "cuda.bindings.driver",
        *,
        gpu: str = "NVIDIA Fake GPU",
        cc: tuple[int, int] = (8, 6),
    ) -> None:
        super().__init__(name)
        self.gpu = gpu
        self.cc = cc
        self.log: list[tuple[str, Any]] = []
        self.host: dict[int, Any] = {}
        self.device: dict[int, bytearray] = {}
        self._next_device = 0x7F0000000000
        self._stacks = threading.local()
        self.fail: set[str] = set()
        """Names of calls that fail with CU_ERROR."""
        self.corrupt_uploads = False
        """Flip the first byte of every host-to-device copy (a check that compares bytes must notice)."""
        self.CUstream_flags = SimpleNamespace(CU_STREAM_NON_BLOCKING=1)
        self.CUevent_flags = SimpleNamespace(CU_EVENT_DEFAULT=0)
        self.CUstreamCaptureMode = SimpleNamespace(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL=1)
        self.CUdevice_attribute = SimpleNamespace(
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR=75, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR=76
        )
        self.primary = Handle("CUcontext")
        self.streams: dict[int, Handle] = {}
        self.retained = 0

    def _stack(self) -> list[Handle]:
        if not hasattr(self._stacks, "stack"):
            self._stacks.stack = []
        stack: list[Handle] = self._stacks.stack
        return stack

    def _enter(self, name: str, *args: Any) -> bool:
        self.log.append((name, args))
        return name not in self.fail

    def names(self) -> list[str]:
        return [name for name, _ in self.log]

    def enqueue(self, stream: Any, work: Callable[[], None]) -> None:
        """Run ``work`` now, or record it when ``stream`` is capturing."""
        if isinstance(stream, Handle) and stream.capture is not None:
            stream.capture.append(work)
        else:
            work()

    # Errors and devices.

    def cuGetErrorName(self, error: Any) -> tuple[int, bytes]:
        return 0, b"CUDA_ERROR_FAKE"

    def cuInit(self, flags: int) -> tuple[int]:
        return (0 if self._enter("cuInit") else CU_ERROR,)

    def cuDeviceGetCount(self) -> tuple[int, int]:
        return 0, 1

    def cuDeviceGet(self, ordinal: int) -> tuple[int, int]:
        return (0, ordinal) if ordinal == 0 else (CU_ERROR, 0)

    def cuDeviceGetName(self, length: int, device: int) -> tuple[int, bytes]:
        return 0, self.gpu.encode() + b"\x00" * (length - len(self.gpu))

    def cuDeviceGetAttribute(self, attribute: int, device: int) -> tuple[int, int]:
        return 0, self.cc[0] if attribute == 75 else self.cc[1]

    def cuDeviceTotalMem(self, device: int) -> tuple[int, int]:
        return 0, 80 * 2**30

    # Contexts.

    def cuDevicePrimaryCtxRetain(self, device: int) -> tuple[int, Handle]:
        self._enter("cuDevicePrimaryCtxRetain")
        self.retained += 1
        return 0, self.primary

    def cuDevicePrimaryCtxRelease(self, device: int) -> tuple[int]:
        self._enter("cuDevicePrimaryCtxRelease")
        self.retained -= 1
        return (0,)

    def cuCtxPushCurrent(self, context: Handle) -> tuple[int]:
        self._enter("cuCtxPushCurrent")
        self._stack().append(context)
        return (0,)

    def cuCtxPopCurrent(self) -> tuple[int, Any]:
        self._enter("cuCtxPopCurrent")
        stack = self._stack()
        return (0, stack.pop()) if stack else (CU_ERROR, None)

    def cuCtxGetCurrent(self) -> tuple[int, Any]:
        stack = self._stack()
        return 0, stack[-1] if stack else 0

    def cuCtxSynchronize(self) -> tuple[int]:
        self._enter("cuCtxSynchronize")
        return (0,)

    # Streams and events.

    def cuStreamCreate(self, flags: int) -> tuple[int, Handle]:
        stream = Handle("CUstream")
        self.streams[stream.value] = stream
        self._enter("cuStreamCreate", stream, flags)
        return 0, stream

    def cuStreamSynchronize(self, stream: Handle) -> tuple[int]:
        self._enter("cuStreamSynchronize", stream)
        return (0,)

    def cuStreamDestroy(self, stream: Handle) -> tuple[int]:
        self._enter("cuStreamDestroy", stream)
        return (0,)

    def cuEventCreate(self, flags: int) -> tuple[int, Handle]:
        return 0, Handle("CUevent")

    def cuEventRecord(self, event: Handle, stream: Handle) -> tuple[int]:
        self._enter("cuEventRecord", event, stream)
        return (0,)

    def cuEventSynchronize(self, event: Handle) -> tuple[int]:
        self._enter("cuEventSynchronize", event)
        return (0,)

    def cuEventElapsedTime(self, start: Handle, end: Handle) -> tuple[int, float]:
        return 0, 1.5

    def cuEventDestroy(self, event: Handle) -> tuple[int]:
        return (0,)

    # Memory.

    def cuMemHostAlloc(self, nbytes: int, flags: int) -> tuple[int, int]:
        if not self._enter("cuMemHostAlloc", nbytes):
            return CU_ERROR, 0
        buffer = (ctypes.c_ubyte * nbytes)()
        address = ctypes.addressof(buffer)
        self.host[address] = buffer
        return 0, address

    def cuMemFreeHost(self, address: int) -> tuple[int]:
        self._enter("cuMemFreeHost", address)
        del self.host[address]
        return (0,)

    def cuMemAlloc(self, nbytes: int) -> tuple[int, int]:
        if not self._enter("cuMemAlloc", nbytes):
            return CU_ERROR, 0
        self._next_device += 0x100000
        self.device[self._next_device] = bytearray(nbytes)
        return 0, self._next_device

    def cuMemFree(self, address: int) -> tuple[int]:
        self._enter("cuMemFree", address)
        del self.device[address]
        return (0,)

    def cuMemcpyHtoDAsync(self, device: int, host: int, nbytes: int, stream: Handle) -> tuple[int]:
        self._enter("cuMemcpyHtoDAsync", device, nbytes, stream)

        def work() -> None:
            data = bytearray(ctypes.string_at(host, nbytes))
            if self.corrupt_uploads and data:
                data[0] ^= 0xFF
            self.device[device][:nbytes] = data

        self.enqueue(stream, work)
        return (0,)

    def cuMemcpyDtoHAsync(self, host: int, device: int, nbytes: int, stream: Handle) -> tuple[int]:
        self._enter("cuMemcpyDtoHAsync", device, nbytes, stream)

        def work() -> None:
            ctypes.memmove(host, bytes(self.device[device][:nbytes]), nbytes)

        self.enqueue(stream, work)
        return (0,)

    def read(self, address: int, dtype: Any, count: int) -> np.ndarray:
        return np.frombuffer(bytes(self.device[address]), dtype=dtype, count=count)

    def write(self, address: int, values: np.ndarray) -> None:
        data = values.tobytes()
        self.device[address][: len(data)] = data

    # Graphs.

    def cuStreamBeginCapture(self, stream: Handle, mode: int) -> tuple[int]:
        if not self._enter("cuStreamBeginCapture", stream, mode):
            return (CU_ERROR,)
        stream.capture = []
        return (0,)

    def cuStreamEndCapture(self, stream: Handle) -> tuple[int, Any]:
        self._enter("cuStreamEndCapture", stream)
        work, stream.capture = stream.capture, None
        if "capture" in self.fail:
            return CU_ERROR, None
        graph = Handle("CUgraph")
        graph.capture = work
        return 0, graph

    def cuGraphInstantiate(self, graph: Handle, flags: int) -> tuple[int, Handle]:
        self._enter("cuGraphInstantiate", graph)
        executable = Handle("CUgraphExec")
        executable.capture = list(graph.capture or [])
        return 0, executable

    def cuGraphLaunch(self, executable: Handle, stream: Handle) -> tuple[int]:
        self._enter("cuGraphLaunch", executable, stream)
        for work in executable.capture or []:
            work()
        return (0,)

    def cuGraphDestroy(self, graph: Handle) -> tuple[int]:
        self._enter("cuGraphDestroy", graph)
        return (0,)

    def cuGraphExecDestroy(self, executable: Handle) -> tuple[int]:
        self._enter("cuGraphExecDestroy", executable)
        return (0,)


class FakeRuntime(ModuleType):
    """``cuda.bindings.runtime``: only the call the implementation makes (clearing the last error)."""

    def __init__(self, driver: FakeDriver, name: str = "cuda.bindings.runtime") -> None:
        super().__init__(name)
        self.driver = driver

    def cudaGetLastError(self) -> tuple[int]:
        self.driver.log.append(("cudaGetLastError", ()))
        return (0,)


def install_cuda_python(monkeypatch: pytest.MonkeyPatch, layout: str = "13") -> FakeDriver:
    """Put a fake cuda-python in ``sys.modules`` in the 13.x (``cuda.bindings``) or 12.x (``cuda.cuda``) layout.

    ``monkeypatch.undo()`` puts everything back (outside a test: ``pytest.MonkeyPatch()``).
    """
    from sedeploy.backends.cuda_memory import choice

    driver = FakeDriver("cuda.bindings.driver" if layout == "13" else "cuda.cuda")
    runtime = FakeRuntime(driver, "cuda.bindings.runtime" if layout == "13" else "cuda.cudart")
    package = ModuleType("cuda")
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "cuda", package)
    if layout == "13":
        bindings = ModuleType("cuda.bindings")
        bindings.__path__ = []
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
        monkeypatch.setitem(sys.modules, "cuda.cuda", None)
        monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)
        monkeypatch.setitem(sys.modules, "cuda.bindings.driver", None)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
        monkeypatch.setitem(sys.modules, "cuda.cuda", driver)
        monkeypatch.setitem(sys.modules, "cuda.cudart", runtime)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setenv("SEDEPLOY_CUDA", "cuda-python")
    monkeypatch.setattr(choice, "_apis", {})
    monkeypatch.setattr(choice, "_default", None)
    return driver


# torch.cuda, as the PyTorch runner's CudaExecutor uses it.


class FakeTorchStream:
    def __init__(self, log: list[tuple[Any, ...]], name: str) -> None:
        self.log = log
        self.name = name

    def wait_event(self, event: FakeTorchEvent) -> None:
        self.log.append(("wait", self.name, event.name))

    def synchronize(self) -> None:
        self.log.append(("sync", self.name))


class FakeTorchEvent:
    def __init__(self, log: list[tuple[Any, ...]], name: str) -> None:
        self.log = log
        self.name = name

    def record(self, stream: FakeTorchStream) -> None:
        self.log.append(("record", self.name, stream.name))

    def synchronize(self) -> None:
        self.log.append(("event-sync", self.name))

    def elapsed_time(self, end: FakeTorchEvent) -> float:
        return 2.0


class FakeTorchGraph:
    """A "captured" model call: each replay runs the forward again on the slot's input (as a real replay computes)."""

    def __init__(self, forward: Callable[[], torch.Tensor], log: list[tuple[Any, ...]], stale: bool) -> None:
        self.forward = forward
        self.output = forward().clone()  # a normal tensor: the runner's forward makes inference tensors
        self.log = log
        self.stale = stale
        self.freed = False

    def replay(self) -> torch.Tensor:
        self.log.append(("replay",))
        if not self.stale:
            self.output.copy_(self.forward())
        return self.output

    def free(self) -> None:
        self.freed = True


class FakeTorchOps:
    """``torch.cuda`` for a machine without a GPU: CPU tensors, streams that run in order, graphs that re-run.

    ``capture_works=False``: every capture fails (said at WARNING, as the real one
    does). ``stale_graphs=True``: replays return the captured output without
    recomputing it (a broken graph, for checks that must notice).
    """

    def __init__(self, capture_works: bool = True, stale_graphs: bool = False) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.current = "default"
        self.capture_works = capture_works
        self.stale_graphs = stale_graphs
        self._count = 0
        self._lock = threading.Lock()

    def _name(self, kind: str) -> str:
        with self._lock:
            self._count += 1
            return f"{kind}{self._count}"

    def stream(self) -> FakeTorchStream:
        return FakeTorchStream(self.log, self._name("stream"))

    def event(self, timing: bool = False) -> FakeTorchEvent:
        return FakeTorchEvent(self.log, self._name("event"))

    def pinned(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape)

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape)

    def synchronize(self) -> None:
        self.log.append(("device-sync",))

    @contextmanager
    def use(self, stream: FakeTorchStream) -> Iterator[None]:
        previous, self.current = self.current, stream.name
        try:
            yield
        finally:
            self.current = previous

    def graph_pool(self) -> object:
        pool = object()
        self.log.append(("pool", id(pool)))
        return pool

    def capture(
        self, forward: Callable[[], torch.Tensor], stream: FakeTorchStream, pool: Any = None
    ) -> FakeTorchGraph | None:
        from sedeploy.backends import cuda_memory

        self.log.append(("capture", stream.name, id(pool)))
        if not self.capture_works:
            cuda_memory.warn_once(
                "cuda_graph=True, but the model cannot be captured (fake); running it directly"
            )
            return None
        return FakeTorchGraph(forward, self.log, self.stale_graphs)


# TensorRT.

CLASSES = 3
IMAGE = (2, 2, 2)


def fake_logits(batch: np.ndarray) -> np.ndarray:
    """What the fake engine computes: each row's sum times (1, 2, 3)."""
    sums = batch.reshape(len(batch), int(np.prod(batch.shape[1:]))).sum(axis=1, dtype=np.float32)
    return (sums[:, None] * np.arange(1, CLASSES + 1, dtype=np.float32)).astype(np.float32)


class FakeContext:
    """An execution context that computes :func:`fake_logits` through the fake driver's memory."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.rows: int | None = None
        self.addresses: dict[str, int] = {}
        self.profile = 0
        self.runs = 0
        self.engine.log.append(("create_context", id(self)))

    def set_input_shape(self, name: str, shape: Any) -> bool:
        rows = int(next(iter(shape)))
        low, _, high = self.engine.profile_shapes[self.profile]
        if not low[0] <= rows <= high[0]:
            return False
        self.rows = rows
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        rows = self.rows or 0
        if name == "input":
            return (rows, *IMAGE)
        return (rows, CLASSES + self.engine.wrong_output)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return not self.engine.refuse_address

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.engine.log.append(("set_profile", index))
        self.profile = index
        return True

    def execute_async_v3(self, stream: int) -> bool:
        driver = self.engine.driver
        handle = driver.streams.get(stream)
        rows = self.rows or 0
        source, target = self.addresses["input"], self.addresses["logits"]
        self.engine.log.append(
            ("execute", rows, "capturing" if handle is not None and handle.capture is not None else "run")
        )

        def work() -> None:
            self.runs += 1
            batch = driver.read(source, np.float32, rows * int(np.prod(IMAGE))).reshape(rows, *IMAGE)
            driver.write(target, fake_logits(batch))

        driver.enqueue(handle, work)
        return True

    def __del__(self) -> None:
        self.engine.log.append(("destroy_context", id(self)))
        self.engine.driver.log.append(("destroy_context", (id(self),)))


class FakeEngine:
    def __init__(self, driver: FakeDriver, profiles: int = 1, min_batch: int = 1, max_batch: int = 8) -> None:
        self.driver = driver
        self.log: list[tuple[Any, ...]] = []
        self.num_io_tensors = 2
        self.num_optimization_profiles = profiles
        shape = ((min_batch, *IMAGE), (min_batch, *IMAGE), (max_batch, *IMAGE))
        self.profile_shapes = [shape] * profiles
        self.refuse_address = False
        self.wrong_output = 0
        self.contexts: weakref.WeakSet[FakeContext] = weakref.WeakSet()
        """The execution contexts still alive (TensorRT's engine does not keep them alive either)."""

    def get_tensor_name(self, index: int) -> str:
        return ("input", "logits")[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "input" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_profile_shape(self, name: str, index: int) -> tuple[tuple[int, ...], ...]:
        return self.profile_shapes[index]

    def create_execution_context(self) -> FakeContext:
        context = FakeContext(self)
        self.contexts.add(context)
        return context


class FakeTensorRT(ModuleType):
    """The parts of ``tensorrt`` the runner touches."""

    def __init__(self, engine: FakeEngine, version: str = "10.3.0.26", dla_cores: int = 0) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.engine = engine
        self.dla_cores = dla_cores
        self.runtimes: list[Any] = []
        module = self

        class ILogger:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)
            Severity = int

            def __init__(self) -> None:
                pass

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.num_DLA_cores = module.dla_cores
                self.DLA_core = -1
                self.engine_host_code_allowed = False
                module.runtimes.append(self)

            def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
                return module.engine

        self.ILogger = ILogger
        self.Runtime = Runtime
        self.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.nptype = lambda dtype: np.float32


def write_fake_engine(folder: Any, version: str = "10.3.0.26", **engine_fields: Any) -> Any:
    """A plan file with a real manifest that describes it (the runner checks it before TensorRT)."""
    from manifests import make_manifest

    from sedeploy.artifacts.manifest import write_manifest

    path = folder / "model.engine"
    path.write_bytes(b"fake plan")
    manifest = make_manifest(
        path,
        kind="engine",
        backend_version=version,
        device={"description": "fake", "gpu_name": "NVIDIA Fake GPU", "compute_capability": "8.6"},
        engine={
            "tensorrt_version": version,
            "profile": {"min": 1, "opt": 4, "max": 8},
            "hardware_compat": False,
            "version_compat": False,
            **engine_fields,
        },
    )
    write_manifest(manifest, path)
    return path
