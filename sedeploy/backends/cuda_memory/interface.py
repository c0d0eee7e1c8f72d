"""What every CUDA implementation offers (:class:`CudaApi`), its one error type and the extras that install one.

The implementations (:mod:`.pycuda_impl`, :mod:`.cuda_python_impl`) import only this module, so
importing either never imports the rest of the package.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from sedeploy.errors import SedeployError

EXTRA = "tensorrt"
"""The extra that installs pycuda (with TensorRT)."""
CUDA_EXTRA = "cuda"
"""The extra that installs cuda-python (``cuda-bindings``)."""


class CudaError(SedeployError):
    """A CUDA call failed (no device, out of memory, a failed copy)."""


@dataclass(frozen=True)
class DeviceInfo:
    """What a CUDA device is: index, name, compute capability as ``"major.minor"`` and memory in bytes."""

    index: int
    name: str
    compute_capability: str
    total_memory: int


class CudaApi(abc.ABC):
    """The CUDA calls this package needs, on raw handles; each implementation raises only :class:`CudaError`.

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
        """Read (and so reset) the last error of this implementation's own CUDA runtime, after a failed capture.

        Only that runtime's: cuda-python links its runtime statically, and TensorRT and
        PyTorch each link their own, whose per-thread last error this cannot reach. The
        driver-API calls this package makes report their errors per call and never depend
        on it; a failed capture of TensorRT's enqueue is reported by TensorRT's own call.
        """
        return None
