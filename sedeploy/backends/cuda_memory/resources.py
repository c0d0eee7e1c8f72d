"""CUDA resources that free themselves: the primary context, streams, events, pinned and device buffers, copies.

Each resource keeps the implementation it was made with (:func:`~.choice.api`,
resolved once), so a copy asks nothing again and a buffer, its stream and its
copies are always on one implementation. Resources are freed explicitly
(``free()``/``with``), never by the garbage collector.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from sedeploy.backends.cuda_memory.choice import api
from sedeploy.backends.cuda_memory.interface import CudaApi, CudaError, DeviceInfo
from sedeploy.backends.cuda_memory.pool import pipeline
from sedeploy.backends.cuda_memory.sizing import TensorLayout

Item = TypeVar("Item")
Pending = TypeVar("Pending")
Result = TypeVar("Result")


class Resource:
    """Base of the small CUDA wrappers: ``free()`` once, context-managed."""

    _freed: bool = False
    _api: CudaApi

    def free(self) -> None:
        """Release the resource; safe to call more than once."""
        if self._freed:
            return
        self._freed = True
        self._free()

    def _free(self) -> None:
        raise NotImplementedError

    @property
    def freed(self) -> bool:
        return self._freed

    @property
    def implementation(self) -> CudaApi:
        """The CUDA implementation this resource was made with."""
        return self._api

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.free()


def device_info(index: int = 0) -> DeviceInfo:
    """Describe CUDA device ``index`` (needs no context)."""
    cuda = api()
    count = cuda.device_count()
    if index < 0 or index >= count:
        raise CudaError(f"CUDA device {index} does not exist; this machine has {count} CUDA device(s)")
    return cuda.device_info(index)


class CudaContext(Resource):
    """The primary CUDA context of one device, retained; push it in each thread that uses the GPU.

    ``with context:`` pushes on entry and pops on exit, and nests. ``free()``
    releases the retention once everything allocated under it is freed, and
    leaves no context of its own on the calling thread's stack.
    """

    def __init__(self, device: int = 0, implementation: CudaApi | None = None) -> None:
        self._api = implementation or api()
        self.info = device_info(device) if implementation is None else self._api.device_info(device)
        self.device = device
        self._owner = threading.get_ident()
        self._context = self._api.retain_primary(device)

    @property
    def implementation_name(self) -> str:
        return self._api.name

    def push(self) -> None:
        """Make this context current in the calling thread."""
        if self._freed:
            raise CudaError("this CUDA context was released; create a new one")
        self._api.push(self._context)

    def pop(self) -> None:
        """Undo the calling thread's last :meth:`push`."""
        self._api.pop()

    def synchronize(self) -> None:
        """Wait for all work in this context."""
        with self:
            self._api.context_synchronize()

    def __enter__(self) -> CudaContext:
        self.push()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.pop()

    def _free(self) -> None:
        self._api.release_primary(self.device, self._context, self._owner)


class Stream(Resource):
    """A non-blocking CUDA stream; ``handle`` is the raw ``cudaStream_t`` TensorRT and PyTorch take."""

    def __init__(self) -> None:
        self._api = api()
        self._stream = self._api.stream_create()

    @property
    def handle(self) -> int:
        return self._api.stream_handle(self._stream)

    @property
    def native(self) -> Any:
        """The implementation's stream object, for calls this package makes."""
        return self._stream

    def synchronize(self) -> None:
        """Wait until everything queued on this stream has finished."""
        if not self._freed:
            self._api.stream_synchronize(self._stream)

    def _free(self) -> None:
        self._api.stream_destroy(self._stream)
        self._stream = None


class Event(Resource):
    """A CUDA event: recorded on a stream, it marks when the GPU reaches that point, for GPU-side timings."""

    def __init__(self) -> None:
        self._api = api()
        self._event = self._api.event_create()

    def record(self, stream: Stream) -> None:
        """Queue this event on ``stream``: it completes when the work queued before it has."""
        self._api.event_record(self._event, stream.native)

    def synchronize(self) -> None:
        """Wait until the GPU has reached this event."""
        self._api.event_synchronize(self._event)

    def milliseconds_since(self, start: Event) -> float:
        """GPU time in ms from ``start`` to this event (both recorded, this one completed)."""
        return self._api.event_elapsed_ms(start._event, self._event)

    def _free(self) -> None:
        self._api.event_destroy(self._event)
        self._event = None


class HostBuffer(Resource):
    """A page-locked (pinned) numpy array: the only host memory an async copy may use."""

    def __init__(self, shape: Sequence[int], dtype: np.dtype[Any] | type | str) -> None:
        self._api = api()
        self._array, self._token = self._api.host_alloc(tuple(int(dim) for dim in shape), np.dtype(dtype))

    @property
    def array(self) -> np.ndarray:
        if self._freed:
            raise CudaError("this pinned buffer was freed")
        return self._array

    def rows(self, count: int) -> np.ndarray:
        """The first ``count`` batch items: a contiguous, still page-locked view."""
        return self.array[:count]

    @property
    def nbytes(self) -> int:
        return int(self._array.nbytes)

    def _free(self) -> None:
        self._array = np.empty(0, dtype=self._array.dtype)
        self._api.host_free(self._token)
        self._token = None


class DeviceBuffer(Resource):
    """Linear device memory; ``ptr`` is the address TensorRT and PyTorch take."""

    def __init__(self, nbytes: int) -> None:
        self._api = api()
        self.nbytes = max(int(nbytes), 1)
        self._allocation = self._api.device_alloc(self.nbytes)

    @property
    def ptr(self) -> int:
        if self._freed:
            raise CudaError("this device buffer was freed")
        return self._api.device_pointer(self._allocation)

    def _free(self) -> None:
        self._api.device_free(self._allocation)
        self._allocation = None


def _same_implementation(device: DeviceBuffer, stream: Stream) -> CudaApi:
    if device.implementation is not stream.implementation:
        raise CudaError(
            f"a device buffer made with {device.implementation.name} cannot be copied on a stream made with "
            f"{stream.implementation.name}; make both under one SEDEPLOY_CUDA"
        )
    return device.implementation


def copy_to_device_async(device: DeviceBuffer, host: np.ndarray, stream: Stream) -> None:
    """Queue a copy of the whole of ``host`` (page-locked, contiguous) to the start of ``device``."""
    if host.nbytes > device.nbytes:
        raise CudaError(f"cannot copy {host.nbytes} bytes into a {device.nbytes}-byte device buffer")
    _same_implementation(device, stream).copy_htod_async(device.ptr, host, stream.native)


def copy_to_host_async(host: np.ndarray, device: DeviceBuffer, stream: Stream) -> None:
    """Queue a copy filling ``host`` (page-locked, contiguous, writable) from the start of ``device``."""
    if host.nbytes > device.nbytes:
        raise CudaError(f"cannot copy {host.nbytes} bytes out of a {device.nbytes}-byte device buffer")
    _same_implementation(device, stream).copy_dtoh_async(host, device.ptr, stream.native)


class BufferSet(Resource):
    """One pinned host buffer and one device buffer per I/O tensor, sized for the largest batch, and a stream.

    ``upload(name, rows)`` and ``download(name, rows)`` queue the copies of the
    first ``rows`` batch items on this set's stream. ``free()`` waits for the
    stream first: memory an enqueued copy or kernel still uses is never released.
    """

    def __init__(self, layouts: Iterable[TensorLayout]) -> None:
        self.layouts: dict[str, TensorLayout] = {layout.name: layout for layout in layouts}
        self.host: dict[str, HostBuffer] = {}
        self.device: dict[str, DeviceBuffer] = {}
        self.stream = Stream()
        self._api = self.stream.implementation
        try:
            for layout in self.layouts.values():
                self.host[layout.name] = HostBuffer(layout.shape, layout.dtype)
                self.device[layout.name] = DeviceBuffer(layout.nbytes)
        except BaseException:
            self.free()
            raise

    def upload(self, name: str, rows: int) -> None:
        copy_to_device_async(self.device[name], self.host[name].rows(rows), self.stream)

    def download(self, name: str, rows: int) -> None:
        copy_to_host_async(self.host[name].rows(rows), self.device[name], self.stream)

    def addresses(self) -> Mapping[str, int]:
        """Device address of every tensor, for ``set_tensor_address``."""
        return {name: buffer.ptr for name, buffer in self.device.items()}

    def _free(self) -> None:
        try:
            self.stream.synchronize()
        finally:
            for buffer in [*self.device.values(), *self.host.values()]:
                buffer.free()
            self.stream.free()


class DoubleBuffer(Resource):
    """Two buffer sets on two streams, so the copies of one batch overlap the compute of the previous one.

    ``run(items, submit, collect)`` is :func:`~.pool.pipeline` over the two sets.
    """

    def __init__(self, layouts: Iterable[TensorLayout]) -> None:
        layouts = list(layouts)
        first = BufferSet(layouts)
        try:
            second = BufferSet(layouts)
        except BaseException:
            first.free()
            raise
        self.sets: tuple[BufferSet, BufferSet] = (first, second)
        self._api = first.implementation

    def run(
        self,
        items: Iterable[Item],
        submit: Callable[[BufferSet, Item], Pending],
        collect: Callable[[BufferSet, Pending], Result],
    ) -> Iterator[Result]:
        return pipeline(items, self.sets, submit, collect)

    def _free(self) -> None:
        for buffer_set in self.sets:
            buffer_set.free()
