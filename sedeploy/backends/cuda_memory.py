"""Page-locked host memory, device memory, streams and async copies: the only module that imports pycuda.

TensorRT's runner (and any other GPU code) goes through these small classes, each
with ``free()`` and ``with``, so CUDA resources are released in one known order.
Nothing here touches CUDA at import time: there is no ``pycuda.autoinit``. A
thread that uses the GPU pushes a :class:`CudaContext` (the device's primary
context, which PyTorch and TensorRT also use, so device pointers are shared) and
pops it when done.

The sizing helpers (:func:`volume`, :func:`nbytes_for`, :func:`max_shape`) and
:func:`pipeline` are plain Python and run without a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from sedeploy.errors import BadInputError, SedeployError
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

EXTRA = "tensorrt"
"""The extra that installs pycuda (with TensorRT)."""

_init_lock = threading.Lock()
_initialized = False

Item = TypeVar("Item")
Slot = TypeVar("Slot")
Pending = TypeVar("Pending")
Result = TypeVar("Result")


class CudaError(SedeployError):
    """A CUDA call failed (no device, out of memory, a failed copy)."""


def driver() -> Any:
    """The initialised ``pycuda.driver`` module; :class:`MissingDependencyError` if pycuda is absent."""
    global _initialized
    cuda = import_optional("pycuda.driver", EXTRA)
    with _init_lock:
        if not _initialized:
            try:
                cuda.init()
            except cuda.Error as error:
                raise CudaError(
                    f"CUDA cannot be initialised ({error}); check the NVIDIA driver with nvidia-smi"
                ) from None
            _initialized = True
    return cuda


# Sizing: plain functions, testable without a GPU.


def volume(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of ``shape`` (1 for a scalar); every dimension must be known."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise BadInputError(f"shape {tuple(shape)} has an unknown dimension; resolve it before sizing")
        count *= int(dim)
    return count


def nbytes_for(shape: Sequence[int], dtype: np.dtype[Any] | type | str) -> int:
    """Bytes needed to hold a tensor of ``shape`` and ``dtype``."""
    return volume(shape) * np.dtype(dtype).itemsize


def max_shape(shape: Sequence[int], max_batch: int) -> tuple[int, ...]:
    """``shape`` with a dynamic (negative) leading batch dimension replaced by ``max_batch``.

    Only the batch axis may be dynamic: buffers are allocated once for the largest
    batch, so any other unknown dimension is an error.
    """
    if max_batch < 1:
        raise BadInputError(f"max batch must be at least 1, got {max_batch}")
    if not shape:
        raise BadInputError("a batched tensor needs at least one dimension")
    resolved = (max_batch if shape[0] < 0 else int(shape[0]), *(int(dim) for dim in shape[1:]))
    if any(dim < 0 for dim in resolved[1:]):
        raise BadInputError(f"shape {tuple(shape)} is dynamic beyond the batch axis; only the batch may vary")
    return resolved


@dataclass(frozen=True)
class TensorLayout:
    """One I/O tensor as buffers see it: name, numpy dtype, shape at the largest batch, direction."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    is_input: bool

    @property
    def nbytes(self) -> int:
        return nbytes_for(self.shape, self.dtype)

    @property
    def row_nbytes(self) -> int:
        """Bytes of one batch item."""
        return nbytes_for(self.shape[1:], self.dtype)


def pipeline(
    items: Iterable[Item],
    slots: Sequence[Slot],
    submit: Callable[[Slot, Item], Pending],
    collect: Callable[[Slot, Pending], Result],
) -> Iterator[Result]:
    """Run ``items`` through ``slots`` round-robin, keeping up to ``len(slots)`` in flight; yield in order.

    ``submit`` enqueues one item's work on a slot without waiting; ``collect``
    waits for that slot's work and returns its result. With two slots (two streams,
    two buffer sets) the copies of item i+1 overlap the compute of item i. A slot is
    always collected before it is submitted to again.
    """
    if not slots:
        raise ValueError("pipeline needs at least one slot")
    in_flight: deque[tuple[Slot, Pending]] = deque()
    next_slot = 0
    for item in items:
        if len(in_flight) == len(slots):
            slot, pending = in_flight.popleft()
            yield collect(slot, pending)
        slot = slots[next_slot]
        next_slot = (next_slot + 1) % len(slots)
        in_flight.append((slot, submit(slot, item)))
    while in_flight:
        slot, pending = in_flight.popleft()
        yield collect(slot, pending)


# CUDA resources.


class _Resource:
    """Base of the small CUDA wrappers: ``free()`` once, context-managed."""

    _freed: bool = False

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

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.free()


@dataclass(frozen=True)
class DeviceInfo:
    """What a CUDA device is: index, name and compute capability as ``"major.minor"``."""

    index: int
    name: str
    compute_capability: str
    total_memory: int


def device_info(index: int = 0) -> DeviceInfo:
    """Describe CUDA device ``index`` (needs no context)."""
    cuda = driver()
    count = cuda.Device.count()
    if index < 0 or index >= count:
        raise CudaError(f"CUDA device {index} does not exist; this machine has {count} CUDA device(s)")
    device = cuda.Device(index)
    major, minor = device.compute_capability()
    return DeviceInfo(index, str(device.name()), f"{major}.{minor}", int(device.total_memory()))


class CudaContext(_Resource):
    """The primary CUDA context of one device, retained; push it in each thread that uses the GPU.

    ``with context:`` pushes on entry and pops on exit, and nests. ``free()``
    releases the retention once everything allocated under it is freed.
    """

    def __init__(self, device: int = 0) -> None:
        cuda = driver()
        self.info = device_info(device)
        self._context = cuda.Device(device).retain_primary_context()
        self._cuda = cuda

    def push(self) -> None:
        """Make this context current in the calling thread."""
        self._context.push()

    def pop(self) -> None:
        """Undo the calling thread's last :meth:`push`."""
        self._cuda.Context.pop()

    def synchronize(self) -> None:
        """Wait for all work in this context."""
        with self:
            self._cuda.Context.synchronize()

    def __enter__(self) -> CudaContext:
        self.push()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.pop()

    def _free(self) -> None:
        self._context.detach()


class Stream(_Resource):
    """A CUDA stream; ``handle`` is the raw ``cudaStream_t`` TensorRT takes."""

    def __init__(self) -> None:
        self._stream = driver().Stream()

    @property
    def handle(self) -> int:
        return int(self._stream.handle)

    @property
    def native(self) -> Any:
        """The pycuda stream, for calls this module makes."""
        return self._stream

    def synchronize(self) -> None:
        """Wait until everything queued on this stream has finished."""
        self._stream.synchronize()

    def _free(self) -> None:
        self._stream = None


class Event(_Resource):
    """A CUDA event: recorded on a stream, it marks when the GPU reaches that point, for GPU-side timings."""

    def __init__(self) -> None:
        self._event = driver().Event()

    def record(self, stream: Stream) -> None:
        """Queue this event on ``stream``: it completes when the work queued before it has."""
        self._event.record(stream.native)

    def synchronize(self) -> None:
        """Wait until the GPU has reached this event."""
        self._event.synchronize()

    def milliseconds_since(self, start: Event) -> float:
        """GPU time in ms from ``start`` to this event (both recorded, this one completed)."""
        return float(self._event.time_since(start._event))

    def _free(self) -> None:
        self._event = None


class HostBuffer(_Resource):
    """A page-locked (pinned) numpy array: the only host memory an async copy may use."""

    def __init__(self, shape: Sequence[int], dtype: np.dtype[Any] | type | str) -> None:
        cuda = driver()
        try:
            self._array: np.ndarray = cuda.pagelocked_empty(tuple(shape), np.dtype(dtype))
        except cuda.Error as error:
            raise CudaError(
                f"cannot allocate {nbytes_for(shape, dtype)} bytes of page-locked host memory ({error})"
            ) from None

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
        base = self._array.base
        self._array = np.empty(0, dtype=self._array.dtype)
        if base is not None and hasattr(base, "free"):
            base.free()


class DeviceBuffer(_Resource):
    """Linear device memory; ``ptr`` is the address TensorRT and PyTorch take."""

    def __init__(self, nbytes: int) -> None:
        cuda = driver()
        self.nbytes = max(int(nbytes), 1)
        try:
            self._allocation = cuda.mem_alloc(self.nbytes)
        except cuda.Error as error:
            raise CudaError(f"cannot allocate {self.nbytes} bytes of GPU memory ({error})") from None

    @property
    def ptr(self) -> int:
        if self._freed:
            raise CudaError("this device buffer was freed")
        return int(self._allocation)

    def _free(self) -> None:
        self._allocation.free()


def copy_to_device_async(device: DeviceBuffer, host: np.ndarray, stream: Stream) -> None:
    """Queue a copy of the whole of ``host`` (page-locked, contiguous) to the start of ``device``."""
    if host.nbytes > device.nbytes:
        raise CudaError(f"cannot copy {host.nbytes} bytes into a {device.nbytes}-byte device buffer")
    driver().memcpy_htod_async(device.ptr, host, stream.native)


def copy_to_host_async(host: np.ndarray, device: DeviceBuffer, stream: Stream) -> None:
    """Queue a copy filling ``host`` (page-locked, contiguous, writable) from the start of ``device``."""
    if host.nbytes > device.nbytes:
        raise CudaError(f"cannot copy {host.nbytes} bytes out of a {device.nbytes}-byte device buffer")
    driver().memcpy_dtoh_async(host, device.ptr, stream.native)


class BufferSet(_Resource):
    """One pinned host buffer and one device buffer per I/O tensor, sized for the largest batch, and a stream.

    ``upload(name, rows)`` and ``download(name, rows)`` queue the copies of the
    first ``rows`` batch items on this set's stream.
    """

    def __init__(self, layouts: Iterable[TensorLayout]) -> None:
        self.layouts: dict[str, TensorLayout] = {layout.name: layout for layout in layouts}
        self.host: dict[str, HostBuffer] = {}
        self.device: dict[str, DeviceBuffer] = {}
        self.stream = Stream()
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
        for buffer in [*self.device.values(), *self.host.values()]:
            buffer.free()
        self.stream.free()


class DoubleBuffer(_Resource):
    """Two buffer sets on two streams, so the copies of one batch overlap the compute of the previous one.

    ``run(items, submit, collect)`` is :func:`pipeline` over the two sets.
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


class CudaGraph(_Resource):
    """A captured and instantiated CUDA graph of the work ``enqueue`` puts on ``stream``.

    Use :meth:`capture`, which returns None (and logs why) when the work cannot
    be captured, so the caller falls back to launching it directly.
    """

    def __init__(self, executable: Any) -> None:
        self._executable = executable

    @classmethod
    def capture(cls, stream: Stream, enqueue: Callable[[], None]) -> CudaGraph | None:
        """Capture ``enqueue()``'s work on ``stream`` into a graph, or None if capture is not possible."""
        cuda = driver()
        native = stream.native
        if not hasattr(native, "begin_capture"):
            logger.info("this pycuda has no CUDA graph capture; running without graphs")
            return None
        try:
            native.begin_capture()
        except cuda.Error as error:
            logger.info("CUDA graph capture cannot start (%s); running without graphs", error)
            return None
        graph = None
        failure: BaseException | None = None
        try:
            enqueue()
        except Exception as error:
            failure = error
        finally:
            try:
                graph = native.end_capture()
            except cuda.Error as error:
                failure = failure or error
        if failure is not None or graph is None:
            logger.info("CUDA graph capture failed (%s); running without graphs", failure)
            return None
        try:
            return cls(graph.instantiate())
        except cuda.Error as error:
            logger.info("CUDA graph cannot be instantiated (%s); running without graphs", error)
            return None

    def launch(self, stream: Stream) -> None:
        """Queue one replay of the graph on ``stream``."""
        self._executable.launch(stream.native)

    def _free(self) -> None:
        self._executable = None
