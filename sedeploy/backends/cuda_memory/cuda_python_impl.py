"""The CUDA memory interface on NVIDIA's cuda-python (``cuda-bindings``), as TensorRT's own samples use since 10.14.

The driver API does the work (primary context retain/push/pop, non-blocking
streams, events, ``cuMemHostAlloc`` pinned memory, async copies, stream capture in
thread-local mode). The runtime module serves only :meth:`CudaPythonApi.clear_error`, which
reaches cuda-python's own statically linked runtime, not TensorRT's or PyTorch's. Every call
returns ``(CUresult, *values)``; :func:`_check` turns a failure into one :class:`CudaError` line.
Bindings before 12.9.1 hold the GIL through every call (``cuStreamSynchronize`` included), so
threads sharing a pool of contexts serialise there: the ``cuda`` extra asks for 12.9.1 or later.

Import shim: cuda-python 13 has only ``cuda.bindings.driver``/``runtime``; 12.x has those
(12.6+) and the older ``cuda.cuda``/``cuda.cudart`` (removed in 13, TensorRT-LLM #6808).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from types import ModuleType
from typing import Any

import numpy as np

from sedeploy.backends.cuda_memory.interface import CUDA_EXTRA, CudaApi, CudaError, DeviceInfo
from sedeploy.errors import MissingDependencyError

logger = logging.getLogger(__name__)

LAYOUTS = (
    ("cuda.bindings.driver", "cuda.bindings.runtime"),  # cuda-python 12.6+ and 13.x
    ("cuda.cuda", "cuda.cudart"),  # cuda-python 11.x / 12.x before the move
)
NAME_LENGTH = 256


def load_modules() -> tuple[ModuleType, ModuleType, str]:
    """cuda-python's driver and runtime modules in whichever layout is installed, and the layout's driver name."""
    problems = []
    for driver_name, runtime_name in LAYOUTS:
        try:
            driver = importlib.import_module(driver_name)
            runtime = importlib.import_module(runtime_name)
        except ImportError as error:
            problems.append(f"{driver_name}: {error}")
            continue
        return driver, runtime, driver_name
    raise MissingDependencyError(
        f"cuda-python cannot be imported ({'; '.join(problems)}); install it with: "
        f"pip install 'sedeploy[{CUDA_EXTRA}]'"
    )


class CudaPythonApi(CudaApi):
    """:class:`CudaApi` on cuda-python's driver API."""

    name = "cuda-python"

    def __init__(self, modules: tuple[ModuleType, ModuleType, str] | None = None) -> None:
        self.driver, self.runtime, self.layout = modules or load_modules()
        try:
            result = self.driver.cuInit(0)
        except Exception as error:  # cuda-bindings 13 raises when it cannot find libcuda at all
            raise CudaError(
                f"CUDA cannot be initialised ({error}); check the NVIDIA driver with nvidia-smi"
            ) from None
        self._check(result, "cuInit", initialising=True)

    # Checked calls.

    def _error_name(self, error: Any) -> str:
        try:
            code, name = self.driver.cuGetErrorName(error)
            if int(code) == 0 and name:
                return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            pass
        return str(error)

    def _check(self, result: Any, what: str, *, initialising: bool = False) -> Any:
        """The values of a ``(CUresult, *values)`` tuple (one value unwrapped), or :class:`CudaError`."""
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            hint = "; check the NVIDIA driver with nvidia-smi" if initialising else ""
            raise CudaError(f"CUDA call {what} failed: {self._error_name(error)}{hint}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def _call(self, what: str, *args: Any) -> Any:
        try:
            result = getattr(self.driver, what)(*args)
        except CudaError:
            raise
        except Exception as error:  # a wrong argument type and the like: still one line, never a raw error
            raise CudaError(f"CUDA call {what} failed: {error}") from None
        return self._check(result, what)

    # Devices and contexts.

    def _device(self, index: int) -> Any:
        return self._call("cuDeviceGet", index)

    def device_count(self) -> int:
        return int(self._call("cuDeviceGetCount"))

    def device_info(self, index: int) -> DeviceInfo:
        device = self._device(index)
        raw = self._call("cuDeviceGetName", NAME_LENGTH, device)
        name = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).split("\x00")[0].strip()
        attribute = self.driver.CUdevice_attribute
        major = int(
            self._call("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
        )
        minor = int(
            self._call("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        )
        memory = int(self._call("cuDeviceTotalMem", device))
        return DeviceInfo(index, name, f"{major}.{minor}", memory)

    def retain_primary(self, index: int) -> Any:
        return self._call("cuDevicePrimaryCtxRetain", self._device(index))

    def release_primary(self, index: int, context: Any, owner: int) -> None:
        # The driver API's release is per device and may come from any thread; it never pops a stack.
        if self.current_context() == int(context):
            logger.debug("releasing device %d's primary context while it is current on this thread", index)
        self._call("cuDevicePrimaryCtxRelease", self._device(index))

    def push(self, context: Any) -> None:
        self._call("cuCtxPushCurrent", context)

    def pop(self) -> None:
        self._call("cuCtxPopCurrent")

    def current_context(self) -> int:
        return int(self._call("cuCtxGetCurrent") or 0)

    def context_synchronize(self) -> None:
        self._call("cuCtxSynchronize")

    # Streams and events.

    def stream_create(self) -> Any:
        return self._call("cuStreamCreate", int(self.driver.CUstream_flags.CU_STREAM_NON_BLOCKING))

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cuStreamSynchronize", stream)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cuStreamDestroy", stream)

    def event_create(self) -> Any:
        return self._call("cuEventCreate", int(self.driver.CUevent_flags.CU_EVENT_DEFAULT))

    def event_record(self, event: Any, stream: Any) -> None:
        self._call("cuEventRecord", event, stream)

    def event_synchronize(self, event: Any) -> None:
        self._call("cuEventSynchronize", event)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cuEventElapsedTime", start, end))

    def event_destroy(self, event: Any) -> None:
        self._call("cuEventDestroy", event)

    # Memory.

    def host_alloc(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray, Any]:
        count = 1
        for dim in shape:
            count *= dim
        nbytes = max(count * dtype.itemsize, 1)
        try:
            pointer = int(self._call("cuMemHostAlloc", nbytes, 0))
        except CudaError as error:
            raise CudaError(f"cannot allocate {nbytes} bytes of page-locked host memory ({error})") from None
        raw = (ctypes.c_ubyte * nbytes).from_address(pointer)
        array = np.ctypeslib.as_array(raw)[: count * dtype.itemsize].view(dtype).reshape(shape)
        return array, pointer

    def host_free(self, token: Any) -> None:
        self._call("cuMemFreeHost", token)

    def device_alloc(self, nbytes: int) -> Any:
        try:
            return self._call("cuMemAlloc", nbytes)
        except CudaError as error:
            raise CudaError(f"cannot allocate {nbytes} bytes of GPU memory ({error})") from None

    def device_pointer(self, allocation: Any) -> int:
        return int(allocation)

    def device_free(self, allocation: Any) -> None:
        self._call("cuMemFree", allocation)

    def copy_htod_async(self, device_pointer: int, host: np.ndarray, stream: Any) -> None:
        self._call("cuMemcpyHtoDAsync", device_pointer, host.ctypes.data, host.nbytes, stream)

    def copy_dtoh_async(self, host: np.ndarray, device_pointer: int, stream: Any) -> None:
        if not host.flags.writeable or not host.flags.c_contiguous:
            raise CudaError("a device-to-host copy needs a writable, contiguous host array")
        self._call("cuMemcpyDtoHAsync", host.ctypes.data, device_pointer, host.nbytes, stream)

    # Graphs.

    def graph_unsupported(self) -> str | None:
        needed = ("cuStreamBeginCapture", "cuStreamEndCapture", "cuGraphInstantiate", "cuGraphLaunch")
        missing = [name for name in needed if not hasattr(self.driver, name)]
        return f"this cuda-python lacks {', '.join(missing)}" if missing else None

    def begin_capture(self, stream: Any) -> None:
        mode = self.driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        self._call("cuStreamBeginCapture", stream, mode)

    def end_capture(self, stream: Any) -> Any:
        return self._call("cuStreamEndCapture", stream)

    def graph_instantiate(self, graph: Any) -> Any:
        return self._call("cuGraphInstantiate", graph, 0)

    def graph_launch(self, executable: Any, stream: Any) -> None:
        self._call("cuGraphLaunch", executable, stream)

    def graph_destroy(self, graph: Any) -> None:
        self._call("cuGraphDestroy", graph)

    def graph_exec_destroy(self, executable: Any) -> None:
        self._call("cuGraphExecDestroy", executable)

    def clear_error(self) -> None:
        try:
            self.runtime.cudaGetLastError()
        except Exception as error:  # clearing is best effort; the failure itself was already reported
            logger.debug("cudaGetLastError failed: %s", error)
