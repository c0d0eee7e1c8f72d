"""The CUDA memory interface on pycuda (the ``tensorrt`` extra): the only module that imports pycuda.

Two pycuda habits are corrected here. ``Context.detach()`` of a primary context
releases it without popping it from the driver's context stack, so the context
stays current on the thread after every close; :meth:`PycudaApi.release_primary`
pops it (checked through the driver's own ``cuCtxGetCurrent``, popped with ``cuCtxPopCurrent_v2``,
its result checked). From a thread other
than the one that retained it, pycuda never releases; the retention is then kept
for the life of the process (as PyTorch keeps its own) and said so at DEBUG.
No released pycuda (v2022.1 to v2026.1) can capture CUDA graphs (``Stream.begin_capture``
exists only in unmerged pull requests), so :meth:`PycudaApi.graph_unsupported` says so
and the runners launch directly, with a WARNING.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from typing import Any

import numpy as np

from sedeploy.backends.cuda_memory.interface import EXTRA, CudaApi, CudaError, DeviceInfo
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

CU_STREAM_NON_BLOCKING = 1


def _libcuda() -> Any:
    """The CUDA driver library pycuda itself links, for the two calls pycuda does not expose."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


class PycudaApi(CudaApi):
    """:class:`CudaApi` on ``pycuda.driver``."""

    name = "pycuda"

    def __init__(self) -> None:
        self.cuda = import_optional("pycuda.driver", EXTRA)
        try:
            self.cuda.init()
        except self.cuda.Error as error:
            raise CudaError(
                f"CUDA cannot be initialised ({error}); check the NVIDIA driver with nvidia-smi"
            ) from None
        self._lock = threading.Lock()
        self._library: Any = None
        self._library_loaded = False

    def _guard(self, what: str, call: Any, *args: Any) -> Any:
        """``call(*args)`` with pycuda's exceptions as one :class:`CudaError` line."""
        try:
            return call(*args)
        except self.cuda.Error as error:
            raise CudaError(f"CUDA call {what} failed: {error}") from None

    def _driver_library(self) -> Any:
        with self._lock:
            if not self._library_loaded:
                self._library = _libcuda()
                self._library_loaded = True
            return self._library

    # Devices and contexts.

    def device_count(self) -> int:
        return int(self._guard("cuDeviceGetCount", self.cuda.Device.count))

    def device_info(self, index: int) -> DeviceInfo:
        device = self._guard("cuDeviceGet", self.cuda.Device, index)
        major, minor = self._guard("cuDeviceComputeCapability", device.compute_capability)
        return DeviceInfo(index, str(device.name()), f"{major}.{minor}", int(device.total_memory()))

    def retain_primary(self, index: int) -> Any:
        device = self._guard("cuDeviceGet", self.cuda.Device, index)
        return self._guard("cuDevicePrimaryCtxRetain", device.retain_primary_context)

    def release_primary(self, index: int, context: Any, owner: int) -> None:
        if threading.get_ident() != owner:
            logger.debug(
                "pycuda releases a primary context only from the thread that retained it; device %d's stays "
                "retained until the process exits",
                index,
            )
            return
        handle = int(getattr(context, "handle", 0))
        self._guard("cuCtxPushCurrent", context.push)
        self._guard("cuDevicePrimaryCtxRelease", context.detach)
        # detach() releases without popping: take the context off this thread's stack if it is still there.
        library = self._driver_library()
        if library is None or not handle:
            return
        current = ctypes.c_void_p()
        if library.cuCtxGetCurrent(ctypes.byref(current)) == 0 and (current.value or 0) == handle:
            popped = ctypes.c_void_p()
            # The versioned symbol: the bare cuCtxPopCurrent is the CUDA 3.x entry point the headers renamed.
            result = library.cuCtxPopCurrent_v2(ctypes.byref(popped))
            if result != 0:
                raise CudaError(
                    f"CUDA call cuCtxPopCurrent_v2 failed with CUresult {result} after releasing device {index}'s "
                    "primary context; the context may stay current on this thread"
                )

    def push(self, context: Any) -> None:
        self._guard("cuCtxPushCurrent", context.push)

    def pop(self) -> None:
        self._guard("cuCtxPopCurrent", self.cuda.Context.pop)

    def current_context(self) -> int:
        library = self._driver_library()
        if library is None:
            return 0
        current = ctypes.c_void_p()
        if library.cuCtxGetCurrent(ctypes.byref(current)) != 0:
            return 0
        return int(current.value or 0)

    def context_synchronize(self) -> None:
        self._guard("cuCtxSynchronize", self.cuda.Context.synchronize)

    # Streams and events.

    def stream_create(self) -> Any:
        return self._guard("cuStreamCreate", self.cuda.Stream, CU_STREAM_NON_BLOCKING)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        self._guard("cuStreamSynchronize", stream.synchronize)

    def stream_destroy(self, stream: Any) -> None:
        """pycuda destroys a stream when its object goes; nothing is queued on it after a synchronize."""

    def event_create(self) -> Any:
        return self._guard("cuEventCreate", self.cuda.Event)

    def event_record(self, event: Any, stream: Any) -> None:
        self._guard("cuEventRecord", event.record, stream)

    def event_synchronize(self, event: Any) -> None:
        self._guard("cuEventSynchronize", event.synchronize)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._guard("cuEventElapsedTime", end.time_since, start))

    def event_destroy(self, event: Any) -> None:
        """pycuda destroys an event when its object goes."""

    # Memory.

    def host_alloc(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray, Any]:
        try:
            array = self.cuda.pagelocked_empty(shape, dtype)
        except self.cuda.Error as error:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raise CudaError(f"cannot allocate {nbytes} bytes of page-locked host memory ({error})") from None
        return array, array.base

    def host_free(self, token: Any) -> None:
        if token is not None and hasattr(token, "free"):
            self._guard("cuMemFreeHost", token.free)

    def device_alloc(self, nbytes: int) -> Any:
        try:
            return self.cuda.mem_alloc(nbytes)
        except self.cuda.Error as error:
            raise CudaError(f"cannot allocate {nbytes} bytes of GPU memory ({error})") from None

    def device_pointer(self, allocation: Any) -> int:
        return int(allocation)

    def device_free(self, allocation: Any) -> None:
        self._guard("cuMemFree", allocation.free)

    def copy_htod_async(self, device_pointer: int, host: np.ndarray, stream: Any) -> None:
        self._guard("cuMemcpyHtoDAsync", self.cuda.memcpy_htod_async, device_pointer, host, stream)

    def copy_dtoh_async(self, host: np.ndarray, device_pointer: int, stream: Any) -> None:
        self._guard("cuMemcpyDtoHAsync", self.cuda.memcpy_dtoh_async, host, device_pointer, stream)

    # Graphs.

    def graph_unsupported(self) -> str | None:
        return (
            "no released pycuda can capture CUDA graphs; install cuda-python (pip install 'sedeploy[cuda]') "
            "and set SEDEPLOY_CUDA=cuda-python"
        )
