"""CUDA graphs: when a slot captures one (:class:`GraphSlot`, plain Python) and the graph itself (:class:`CudaGraph`).

Graphs are captured in thread-local mode (another thread's allocation does not
invalidate the capture); a graph that cannot be captured is said at WARNING, once
per reason, and the work is launched directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from sedeploy.backends.cuda_memory.interface import CudaApi, CudaError
from sedeploy.backends.cuda_memory.resources import Resource, Stream

logger = logging.getLogger(__name__)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(message: str) -> None:
    """Log ``message`` at WARNING the first time it comes in this process (a capture fails per call otherwise)."""
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    logger.warning(message)


class Freeable(Protocol):
    def free(self) -> None: ...


Graph = TypeVar("Graph", bound=Freeable)


class GraphSlot(Generic[Graph]):
    """The CUDA graphs of one execution slot, by batch size, and when to capture the next one.

    A batch size always runs directly first: TensorRT and PyTorch set up
    shape-dependent state on a real launch. After that:

    - ``per_size=True`` (PyTorch): one graph per batch size, captured after that
      size's first direct run and kept, so a call of 40 rows at ``max_batch`` 32
      replays a 32-row and an 8-row graph and captures nothing more.
    - ``per_size=False`` (TensorRT, whose execution context holds one shape at a
      time): a single graph, captured for a size only once that size has run twice in
      a row; a run of another size goes directly and leaves the graph in place, so
      alternating sizes never re-capture.

    A failed capture is remembered for its size and never retried. Call
    :meth:`after_run` once after every run (direct or replayed).
    """

    def __init__(self, per_size: bool = False) -> None:
        self.per_size = per_size
        self._graphs: dict[int, Graph | None] = {}
        """Graph per batch size; None where capture failed."""
        self._last_rows: int | None = None
        self.captures = 0
        self.replays = 0

    @property
    def sizes(self) -> list[int]:
        """Batch sizes that have a graph now."""
        return sorted(rows for rows, graph in self._graphs.items() if graph is not None)

    def launchable(self, rows: int) -> Graph | None:
        """The graph recorded for ``rows``, or None (then run directly)."""
        return self._graphs.get(rows)

    def replayable(self, rows: int) -> bool:
        return self._graphs.get(rows) is not None

    def after_run(self, rows: int) -> bool:
        """Note a run of ``rows``; True when a graph for ``rows`` should be captured now."""
        previous, self._last_rows = self._last_rows, rows
        if rows in self._graphs:
            return False
        return self.per_size or previous == rows

    def record(self, rows: int, capture: Callable[[], Graph | None]) -> Graph | None:
        """Capture a graph for ``rows`` (None when capture is not possible); single-graph slots free the old one."""
        stale = [
            size
            for size, graph in self._graphs.items()
            if graph is not None and (size == rows or not self.per_size)
        ]
        for size in stale:
            graph = self._graphs.pop(size)
            if graph is not None:
                graph.free()
        graph = capture()
        self._graphs[rows] = graph
        if graph is not None:
            self.captures += 1
        return graph

    def free(self) -> None:
        """Free every graph (and forget failed sizes: a new capture may succeed after a reload)."""
        graphs, self._graphs = list(self._graphs.values()), {}
        self._last_rows = None
        for graph in graphs:
            if graph is not None:
                graph.free()


class CudaGraph(Resource):
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
        cuda = stream.implementation
        reason = cuda.graph_unsupported()
        if reason is not None:
            warn_once(f"cuda_graph=True, but {reason}; running without CUDA graphs")
            return None
        native = stream.native
        try:
            cuda.begin_capture(native)
        except CudaError as error:
            cuda.clear_error()
            warn_once(f"CUDA graph capture cannot start ({error}); running without CUDA graphs")
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
            warn_once(f"CUDA graph capture failed ({failure}); running without CUDA graphs")
            return None
        try:
            executable = cuda.graph_instantiate(graph)
        except CudaError as error:
            cuda.clear_error()
            warn_once(f"CUDA graph cannot be instantiated ({error}); running without CUDA graphs")
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
