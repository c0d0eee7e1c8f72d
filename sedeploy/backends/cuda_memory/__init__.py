"""Page-locked host memory, device memory, streams, events, async copies and CUDA graphs: the one CUDA module.

Two implementations sit behind one interface (:class:`CudaApi`): pycuda
(:mod:`.pycuda_impl`, the ``tensorrt`` extra) and NVIDIA's cuda-python
(:mod:`.cuda_python_impl`, the ``cuda`` extra; ``cuda.bindings`` 12.x/13.x or the
older ``cuda.cuda``/``cuda.cudart`` layout). :func:`api` picks pycuda where it is
installed, else cuda-python; ``SEDEPLOY_CUDA=pycuda|cuda-python`` chooses. Nothing
touches CUDA at import time (no ``pycuda.autoinit``).

Thread rules, the same on both: a thread that uses the GPU makes a
:class:`CudaContext` (the device's primary context, which PyTorch and TensorRT also
use, so device pointers are shared) current with ``with context:`` and pops it when
done; resources are freed explicitly (``free()``/``with``), never by the garbage
collector. Streams are non-blocking (a CUDA graph cannot be captured on a stream that
synchronises with the legacy default stream) and graphs are captured in thread-local
mode (another thread's allocation does not invalidate the capture).

The sizing helpers, :func:`pipeline`, :class:`SlotPool` and :class:`GraphSlot` are plain
Python and run without a GPU.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError, SedeployError

logger = logging.getLogger(__name__)

EXTRA = "tensorrt"
"""The extra that installs pycuda (with TensorRT)."""
CUDA_EXTRA = "cuda"
"""The extra that installs cuda-python (``cuda-bindings``)."""
ENV_VAR = "SEDEPLOY_CUDA"
"""Environment variable choosing the implementation: ``pycuda`` or ``cuda-python``."""
IMPLEMENTATIONS = ("pycuda", "cuda-python")

Item = TypeVar("Item")
Slot = TypeVar("Slot")
Pending = TypeVar("Pending")
Result = TypeVar("Result")


class CudaError(SedeployError):
    """A CUDA call failed (no device, out of memory, a failed copy)."""


class PoolDeadlockError(SedeployError):
    """Waiting for an execution slot would block forever: every slot is held by threads that are waiting too."""


@dataclass(frozen=True)
class DeviceInfo:
    """What a CUDA device is: index, name, compute capability as ``"major.minor"`` and memory in bytes."""

    index: int
    name: str
    compute_capability: str
    total_memory: int


# The implementation interface.


class CudaApi(abc.ABC):
    """The CUDA calls this module needs, on raw handles; each implementation raises only :class:`CudaError`.

    Handles are whatever the implementation uses (pycuda objects, cuda-python
    ``CUstream`` ...); :meth:`stream_handle` and :meth:`device_pointer` give the
    integers TensorRT and PyTorch take.
    """

    name: str = ""

    @abc.abstractmethod
    def device_count(self) -> int: ...

    @abc.abstractmethod
    def device_info(self, index: int) -> DeviceInfo: ...

    @abc.abstractmethod
    def retain_primary(self, index: int) -> Any:
        """Retain device ``index``'s primary context (on the calling thread); returns the context handle."""

    @abc.abstractmethod
    def release_primary(self, index: int, context: Any, owner: int) -> None:
        """Undo :meth:`retain_primary`; ``owner`` is the thread ident that retained it."""

    @abc.abstractmethod
    def push(self, context: Any) -> None: ...

    @abc.abstractmethod
    def pop(self) -> None: ...

    @abc.abstractmethod
    def current_context(self) -> int:
        """The calling thread's current context as an integer handle, 0 when none is current."""

    @abc.abstractmethod
    def context_synchronize(self) -> None: ...

    @abc.abstractmethod
    def stream_create(self) -> Any:
        """A non-blocking stream in the current context."""

    @abc.abstractmethod
    def stream_handle(self, stream: Any) -> int: ...

    @abc.abstractmethod
    def stream_synchronize(self, stream: Any) -> None: ...

    @abc.abstractmethod
    def stream_destroy(self, stream: Any) -> None: ...

    @abc.abstractmethod
    def event_create(self) -> Any: ...

    @abc.abstractmethod
    def event_record(self, event: Any, stream: Any) -> None: ...

    @abc.abstractmethod
    def event_synchronize(self, event: Any) -> None: ...

    @abc.abstractmethod
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...

    @abc.abstractmethod
    def event_destroy(self, event: Any) -> None: ...

    @abc.abstractmethod
    def host_alloc(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray, Any]:
        """A page-locked numpy array and the token :meth:`host_free` takes."""

    @abc.abstractmethod
    def host_free(self, token: Any) -> None: ...

    @abc.abstractmethod
    def device_alloc(self, nbytes: int) -> Any: ...

    @abc.abstractmethod
    def device_pointer(self, allocation: Any) -> int: ...

    @abc.abstractmethod
    def device_free(self, allocation: Any) -> None: ...

    @abc.abstractmethod
    def copy_htod_async(self, device_pointer: int, host: np.ndarray, stream: Any) -> None: ...

    @abc.abstractmethod
    def copy_dtoh_async(self, host: np.ndarray, device_pointer: int, stream: Any) -> None: ...

    @abc.abstractmethod
    def graph_unsupported(self) -> str | None:
        """Why this implementation cannot capture CUDA graphs, or None when it can."""

    def begin_capture(self, stream: Any) -> None:
        raise CudaError(self.graph_unsupported() or "CUDA graph capture is not implemented")

    def end_capture(self, stream: Any) -> Any:
        raise CudaError(self.graph_unsupported() or "CUDA graph capture is not implemented")

    def graph_instantiate(self, graph: Any) -> Any:
        raise CudaError(self.graph_unsupported() or "CUDA graph capture is not implemented")

    def graph_launch(self, executable: Any, stream: Any) -> None:
        raise CudaError(self.graph_unsupported() or "CUDA graph capture is not implemented")

    def graph_destroy(self, graph: Any) -> None:
        """Free a captured (not instantiated) graph."""
        return None

    def graph_exec_destroy(self, executable: Any) -> None:
        """Free an instantiated graph."""
        return None

    def clear_error(self) -> None:
        """Reset the CUDA runtime's last (sticky-until-read) error, e.g. after a failed capture."""
        return None


# Selection.

_api_lock = threading.Lock()
_apis: dict[str, CudaApi] = {}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def cuda_python_importable() -> bool:
    """Whether cuda-python imports in either layout (``cuda.bindings`` or ``cuda.cuda``/``cuda.cudart``)."""
    return (_importable("cuda.bindings.driver") and _importable("cuda.bindings.runtime")) or (
        _importable("cuda.cuda") and _importable("cuda.cudart")
    )


def choose_implementation(environ: Mapping[str, str] | None = None) -> str:
    """``pycuda`` or ``cuda-python``: ``SEDEPLOY_CUDA`` if set, else pycuda where installed, else cuda-python.

    Raises :class:`MissingDependencyError` (naming both extras) when neither imports,
    and :class:`ConfigError` for an unknown ``SEDEPLOY_CUDA``.
    """
    requested = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip().lower()
    if requested:
        if requested == "cuda_python":
            requested = "cuda-python"
        if requested not in IMPLEMENTATIONS:
            raise ConfigError(f"{ENV_VAR}={requested!r} is not one of {', '.join(IMPLEMENTATIONS)}")
        return requested
    if _importable("pycuda.driver"):
        return "pycuda"
    if cuda_python_importable():
        return "cuda-python"
    raise MissingDependencyError(
        "neither pycuda nor cuda-python can be imported, and one is needed for GPU memory; install pycuda "
        f"with: pip install 'sedeploy[{EXTRA}]', or cuda-python with: pip install 'sedeploy[{CUDA_EXTRA}]'"
    )


def api(name: str | None = None) -> CudaApi:
    """The initialised implementation ``name`` (default :func:`choose_implementation`), one per process."""
    chosen = name or choose_implementation()
    with _api_lock:
        instance = _apis.get(chosen)
        if instance is None:
            if chosen == "pycuda":
                from sedeploy.backends.cuda_memory.pycuda_impl import PycudaApi

                instance = PycudaApi()
            elif chosen == "cuda-python":
                from sedeploy.backends.cuda_memory.cuda_python_impl import CudaPythonApi

                instance = CudaPythonApi()
            else:
                raise ConfigError(
                    f"unknown CUDA implementation {chosen!r}; use one of {', '.join(IMPLEMENTATIONS)}"
                )
            _apis[chosen] = instance
        return instance


def reset_implementations() -> None:
    """Forget the initialised implementations (tests swap them)."""
    with _api_lock:
        _apis.clear()


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


class SlotPool(Generic[Slot]):
    """A fixed set of execution slots shared by threads: take one, use it, give it back.

    Unlike a bare queue it knows who holds what, so a wait that can never end
    (every slot held by threads that are themselves waiting, e.g. a caller that
    runs the model inside its own ``stream()`` loop) raises
    :class:`PoolDeadlockError` instead of hanging, and :meth:`close` wakes every
    waiter. ``closed_error`` makes the error a closed pool raises.
    """

    def __init__(self, slots: Iterable[Slot], closed_error: Callable[[], Exception]) -> None:
        self._free: deque[Slot] = deque(slots)
        self.size = len(self._free)
        if not self.size:
            raise ValueError("a slot pool needs at least one slot")
        self._closed_error = closed_error
        self._condition = threading.Condition()
        self._held: dict[int, int] = {}
        self._waiting: set[int] = set()
        self._closed = False

    @property
    def out(self) -> int:
        """Slots currently taken."""
        with self._condition:
            return self.size - len(self._free)

    def held_by_current_thread(self) -> int:
        with self._condition:
            return self._held.get(threading.get_ident(), 0)

    def acquire(self, wait: bool = True) -> Slot | None:
        """A free slot; waits for one unless ``wait`` is off (then None when none is free)."""
        me = threading.get_ident()
        with self._condition:
            while True:
                if self._closed:
                    raise self._closed_error()
                if self._free:
                    self._held[me] = self._held.get(me, 0) + 1
                    return self._free.popleft()
                if not wait:
                    return None
                if self._would_deadlock(me):
                    raise PoolDeadlockError(
                        f"all {self.size} execution slot(s) are held by threads waiting for one (this thread holds "
                        f"{self._held.get(me, 0)}); do not call the runner inside its own stream() loop on one "
                        "thread, or load it with more contexts"
                    )
                self._waiting.add(me)
                try:
                    self._condition.wait()
                finally:
                    self._waiting.discard(me)

    def _would_deadlock(self, me: int) -> bool:
        holders = [thread for thread, count in self._held.items() if count > 0]
        return bool(holders) and all(thread == me or thread in self._waiting for thread in holders)

    def release(self, slot: Slot) -> bool:
        """Give ``slot`` back; True when the pool is closed and this was the last slot out."""
        me = threading.get_ident()
        with self._condition:
            count = self._held.get(me, 0)
            if count <= 1:
                self._held.pop(me, None)
            else:
                self._held[me] = count - 1
            if count == 0:
                # Given back by another thread than took it (a generator finished elsewhere): take it off
                # whichever thread still counts it.
                for thread, held in list(self._held.items()):
                    if held > 0:
                        self._held[thread] = held - 1
                        if held == 1:
                            del self._held[thread]
                        break
            self._free.append(slot)
            self._condition.notify_all()
            return self._closed and len(self._free) == self.size

    def close(self) -> bool:
        """Refuse new takers and wake waiters; True when no slot is out (the caller may free everything now)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            return len(self._free) == self.size


class Freeable(Protocol):
    def free(self) -> None: ...


Graph = TypeVar("Graph", bound=Freeable)


class GraphSlot(Generic[Graph]):
    """One slot's CUDA graph, for the batch size it was recorded at; re-recorded when the batch changes.

    A batch size is first run directly (TensorRT and PyTorch set up shape-dependent
    state on a real launch), then :meth:`record` captures it; later runs of the
    same size :meth:`replayable` the graph. A capture that fails is remembered for
    that size, so it is not retried on every call.
    """

    def __init__(self) -> None:
        self.graph: Graph | None = None
        self.rows: int | None = None
        """Batch size the graph (or the failed capture) is for."""
        self.captures = 0
        self.replays = 0

    def replayable(self, rows: int) -> bool:
        return self.graph is not None and self.rows == rows

    def needs_record(self, rows: int) -> bool:
        return self.rows != rows

    def record(self, rows: int, capture: Callable[[], Graph | None]) -> Graph | None:
        """Free the old graph and capture one for ``rows`` (None when capture is not possible)."""
        self.free()
        self.rows = rows
        self.graph = capture()
        if self.graph is not None:
            self.captures += 1
        return self.graph

    def free(self) -> None:
        if self.graph is not None:
            self.graph.free()
        self.graph = None
        self.rows = None


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


def device_info(index: int = 0) -> DeviceInfo:
    """Describe CUDA device ``index`` (needs no context)."""
    cuda = api()
    count = cuda.device_count()
    if index < 0 or index >= count:
        raise CudaError(f"CUDA device {index} does not exist; this machine has {count} CUDA device(s)")
    return cuda.device_info(index)


class CudaContext(_Resource):
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
    def implementation(self) -> str:
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


class Stream(_Resource):
    """A non-blocking CUDA stream; ``handle`` is the raw ``cudaStream_t`` TensorRT and PyTorch take."""

    def __init__(self) -> None:
        self._api = api()
        self._stream = self._api.stream_create()

    @property
    def handle(self) -> int:
        return self._api.stream_handle(self._stream)

    @property
    def native(self) -> Any:
        """The implementation's stream object, for calls this module makes."""
        return self._stream

    def synchronize(self) -> None:
        """Wait until everything queued on this stream has finished."""
        if not self._freed:
            self._api.stream_synchronize(self._stream)

    def _free(self) -> None:
        self._api.stream_destroy(self._stream)
        self._stream = None


class Event(_Resource):
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


class HostBuffer(_Resource):
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


class DeviceBuffer(_Resource):
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


def copy_to_device_async(device: DeviceBuffer, host: np.ndarray, stream: Stream) -> None:
    """Queue a copy of the whole of ``host`` (page-locked, contiguous) to the start of ``device``."""
    if host.nbytes > device.nbytes:
        raise CudaError(f"cannot copy {host.nbytes} bytes into a {device.nbytes}-byte device buffer")
    api().copy_htod_async(device.ptr, host, stream.native)


def copy_to_host_async(host: np.ndarray, device: DeviceBuffer, stream: Stream) -> None:
    """Queue a copy filling ``host`` (page-locked, contiguous, writable) from the start of ``device``."""
    if host.nbytes > device.nbytes:
        raise CudaError(f"cannot copy {host.nbytes} bytes out of a {device.nbytes}-byte device buffer")
    api().copy_dtoh_async(host, device.ptr, stream.native)


class BufferSet(_Resource):
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


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(message: str) -> None:
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    logger.warning(message)


class CudaGraph(_Resource):
    """A captured and instantiated CUDA graph of the work ``enqueue`` puts on ``stream``.

    Use :meth:`capture`, which returns None (and says why at WARNING, once per
    reason) when the work cannot be captured, so the caller launches it directly.
    """

    def __init__(self, implementation: CudaApi, executable: Any) -> None:
        self._api = implementation
        self._executable = executable

    @classmethod
    def capture(cls, stream: Stream, enqueue: Callable[[], None]) -> CudaGraph | None:
        """Capture ``enqueue()``'s work on ``stream`` (thread-local mode) into a graph, or None if not possible."""
        cuda = api()
        reason = cuda.graph_unsupported()
        if reason is not None:
            _warn_once(f"cuda_graph=True, but {reason}; running without CUDA graphs")
            return None
        native = stream.native
        try:
            cuda.begin_capture(native)
        except CudaError as error:
            cuda.clear_error()
            _warn_once(f"CUDA graph capture cannot start ({error}); running without CUDA graphs")
            return None
        graph: Any = None
        failure: BaseException | None = None
        try:
            enqueue()
        except Exception as error:
            failure = error
        finally:
            try:
                graph = cuda.end_capture(native)  # always ends capture mode, even after a failed enqueue
            except CudaError as error:
                failure = failure or error
        if failure is not None or graph is None:
            if graph is not None:
                cuda.graph_destroy(graph)
            cuda.clear_error()
            _warn_once(f"CUDA graph capture failed ({failure}); running without CUDA graphs")
            return None
        try:
            executable = cuda.graph_instantiate(graph)
        except CudaError as error:
            cuda.clear_error()
            _warn_once(f"CUDA graph cannot be instantiated ({error}); running without CUDA graphs")
            return None
        finally:
            cuda.graph_destroy(graph)
        return cls(cuda, executable)

    def launch(self, stream: Stream) -> None:
        """Queue one replay of the graph on ``stream``."""
        if self._freed:
            raise CudaError("this CUDA graph was freed")
        self._api.graph_launch(self._executable, stream.native)

    def _free(self) -> None:
        self._api.graph_exec_destroy(self._executable)
        self._executable = None


__all__ = [
    "CUDA_EXTRA",
    "ENV_VAR",
    "EXTRA",
    "IMPLEMENTATIONS",
    "BufferSet",
    "CudaApi",
    "CudaContext",
    "CudaError",
    "CudaGraph",
    "DeviceBuffer",
    "DeviceInfo",
    "DoubleBuffer",
    "Event",
    "GraphSlot",
    "HostBuffer",
    "PoolDeadlockError",
    "SlotPool",
    "Stream",
    "TensorLayout",
    "api",
    "choose_implementation",
    "copy_to_device_async",
    "copy_to_host_async",
    "cuda_python_importable",
    "device_info",
    "max_shape",
    "nbytes_for",
    "pipeline",
    "reset_implementations",
    "volume",
]
