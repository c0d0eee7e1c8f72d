"""Page-locked host memory, device memory, streams, events, async copies and CUDA graphs: the one CUDA package.

Two implementations sit behind one interface (:class:`CudaApi`, :mod:`.interface`): pycuda
(:mod:`.pycuda_impl`, the ``tensorrt`` extra) and NVIDIA's cuda-python (:mod:`.cuda_python_impl`,
the ``cuda`` extra; ``cuda.bindings`` 12.x/13.x or the older ``cuda.cuda``/``cuda.cudart``
layout). :func:`api` (:mod:`.choice`) picks pycuda where it is installed, else cuda-python;
``SEDEPLOY_CUDA=pycuda|cuda-python`` chooses; the choice is made once per process. Nothing
touches CUDA at import time (no ``pycuda.autoinit``).

Thread rules, the same on both: a thread that uses the GPU makes a :class:`CudaContext`
(the device's primary context, which PyTorch and TensorRT also use, so device pointers are
shared) current with ``with context:`` and pops it when done; resources (:mod:`.resources`)
are freed explicitly (``free()``/``with``), never by the garbage collector. Streams are
non-blocking (a CUDA graph cannot be captured on a stream that synchronises with the legacy
default stream) and graphs (:mod:`.graphs`) are captured in thread-local mode.

The sizing helpers (:mod:`.sizing`), :func:`pipeline` and :class:`SlotPool` (:mod:`.pool`) and
:class:`GraphSlot` are plain Python and run without a GPU. This module only re-exports.
"""

from sedeploy.backends.cuda_memory.choice import (
    ENV_VAR,
    IMPLEMENTATIONS,
    api,
    choose_implementation,
    cuda_python_importable,
    reset_implementations,
)
from sedeploy.backends.cuda_memory.graphs import CudaGraph, GraphSlot, warn_once
from sedeploy.backends.cuda_memory.interface import CUDA_EXTRA, EXTRA, CudaApi, CudaError, DeviceInfo
from sedeploy.backends.cuda_memory.pool import PoolDeadlockError, SlotPool, pipeline
from sedeploy.backends.cuda_memory.resources import (
    BufferSet,
    CudaContext,
    DeviceBuffer,
    DoubleBuffer,
    Event,
    HostBuffer,
    Stream,
    copy_to_device_async,
    copy_to_host_async,
    device_info,
)
from sedeploy.backends.cuda_memory.sizing import TensorLayout, max_shape, nbytes_for, volume

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
    "warn_once",
]
