"""TensorRT runner: checks the manifest before TensorRT sees the plan, then runs batches with pinned memory.

Pinned host buffers and device buffers are allocated once for the profile's largest batch, from a small pool of
execution contexts; :meth:`TensorRTRunner.stream` double-buffers many batches.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sedeploy.artifacts.manifest import (
    checked_manifest,
    manifest_path,
)
from sedeploy.artifacts.metadata import ModelMetadata
from sedeploy.backends import cuda_memory
from sedeploy.backends.base import Runner, RunnerClosedError, TensorSpec
from sedeploy.backends.tensorrt.compat import (
    EngineMismatchError,
    EngineRunError,
    engine_compatibility_problem,
    make_trt_logger,
    require_tensorrt,
)
from sedeploy.errors import BadInputError

if TYPE_CHECKING:
    import tensorrt as trt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of a batch, run as a batch of ``run_rows`` (padded up to the profile's MIN)."""

    start: int
    stop: int
    run_rows: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_chunks(total: int, min_batch: int, max_batch: int) -> list[Chunk]:
    """Split ``total`` rows into engine-sized pieces: at most ``max_batch`` each, padded to ``min_batch``."""
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch} and {max_batch}")
    chunks = []
    for start in range(0, total, max_batch):
        stop = min(start + max_batch, total)
        chunks.append(Chunk(start, stop, max(stop - start, min_batch)))
    return chunks


def join_outputs(parts: Sequence[np.ndarray], empty_shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Re-join per-chunk outputs along the batch axis (an empty batch gives an empty array)."""
    if not parts:
        return np.empty((0, *empty_shape), dtype=dtype)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=0)


@dataclass
class _ExecutionSlot:
    """One execution context with its own stream and buffers: what one caller uses at a time."""

    context: trt.IExecutionContext
    buffers: cuda_memory.BufferSet
    graphs: dict[int, cuda_memory.CudaGraph | None] = field(default_factory=dict)
    last_rows: int | None = None
    """Batch size of the context's last run: a graph is replayed only while the shape is unchanged."""

    def free(self) -> None:
        for graph in self.graphs.values():
            if graph is not None:
                graph.free()
        self.graphs.clear()
        self.buffers.free()
        del self.context


class TensorRTRunner(Runner):
    """Runs a TensorRT engine built by :func:`build_engine`: numpy in, numpy out, pinned memory in between.

    ``contexts`` execution contexts (each with its own stream and buffers) serve
    that many concurrent callers; more callers wait. ``cuda_graph=True`` captures
    one CUDA graph per batch size after its first run, and falls back to direct
    launches where capture fails. ``device`` is the CUDA device index. The manifest
    is required; ``verify_hash=False`` skips hashing the engine against it (the
    version and GPU checks still run).
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        device: int = 0,
        contexts: int = 2,
        cuda_graph: bool = False,
        verify_hash: bool = True,
    ) -> None:
        if contexts < 1:
            raise BadInputError(f"contexts must be at least 1, got {contexts}")
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise BadInputError(
                f"engine {self.engine_path} does not exist; build it with sedeploy build-engine"
            )
        # The manifest is checked before TensorRT is needed: a wrong file is named as such on any machine.
        # verify_hash=False: hashing a large engine costs a read of the file; hot paths may skip it.
        manifest = checked_manifest(self.engine_path, verify_hash=verify_hash, required=True)
        assert manifest is not None  # required=True raises instead of returning None
        self.manifest = manifest
        require_tensorrt()
        import tensorrt as trt

        self.cuda_graph = cuda_graph
        self._pool: queue.Queue[_ExecutionSlot] = queue.Queue()
        self._pool_lock = threading.Lock()
        self._slots_out = 0
        self._slots: list[_ExecutionSlot] = []
        self._finished = False

        gpu = cuda_memory.device_info(device)
        problem = engine_compatibility_problem(
            self.manifest.engine,
            self.manifest.device,
            tensorrt_version=trt.__version__,
            compute_capability=gpu.compute_capability,
        )
        if problem is not None:
            raise EngineMismatchError(
                f"engine {self.engine_path} {problem}; rebuild it on this machine with "
                f"sedeploy build-engine MODEL.onnx --backend tensorrt"
            )
        self.provider = f"TensorRT {trt.__version__} on {gpu.name}"
        self.gpu_name = gpu.name
        """The CUDA device's name: bench looks its published peak up by it."""
        self.metadata = (
            ModelMetadata.from_dict(self.manifest.source_metadata, str(manifest_path(self.engine_path)))
            if self.manifest.source_metadata
            else None
        )

        self._cuda = cuda_memory.CudaContext(device)
        try:
            with self._cuda:
                self._load(contexts)
        except BaseException:
            self._free_all()
            raise

    def _load(self, contexts: int) -> None:
        import tensorrt as trt

        runtime = trt.Runtime(make_trt_logger())
        engine_info = self.manifest.engine or {}
        if engine_info.get("version_compat"):
            runtime.engine_host_code_allowed = True
        self._runtime = runtime
        engine = _deserialize(runtime, self.engine_path)
        self._engine = engine
        inputs, outputs = _io_names(engine)
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(
                f"engine {self.engine_path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "sedeploy runs image classifiers with one of each"
            )
        self._input_name, self._output_name = inputs[0], outputs[0]
        min_shape, _, max_input_shape = (
            _dims(dims) for dims in engine.get_tensor_profile_shape(self._input_name, 0)
        )
        self._min_batch, self._max_batch = min_shape[0], max_input_shape[0]
        input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._input_name))).name
        output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._output_name))).name

        first_context = _create_context(engine)
        if not first_context.set_input_shape(self._input_name, max_input_shape):
            raise EngineRunError(f"engine {self.engine_path} rejects its own largest input {max_input_shape}")
        max_output_shape = _dims(first_context.get_tensor_shape(self._output_name))
        self.input_spec = TensorSpec(
            self._input_name, input_dtype, (None, *max_input_shape[1:]), max_batch=self._max_batch
        )
        self._output_row_shape = max_output_shape[1:]
        self.output_spec = TensorSpec(
            self._output_name, output_dtype, (None, *max_output_shape[1:]), max_batch=self._max_batch
        )
        layouts = [
            cuda_memory.TensorLayout(self._input_name, input_dtype, max_input_shape, is_input=True),
            cuda_memory.TensorLayout(self._output_name, output_dtype, max_output_shape, is_input=False),
        ]
        for index in range(contexts):
            context = first_context if index == 0 else _create_context(engine)
            slot = _ExecutionSlot(context, cuda_memory.BufferSet(layouts))
            self._slots.append(slot)
            self._pool.put(slot)

    def __enter__(self) -> TensorRTRunner:
        return self

    @property
    def max_batch(self) -> int:
        """Largest batch one engine call takes; bigger inputs are split."""
        return self._max_batch

    # One batch.

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        slot = self._acquire()
        try:
            with self._cuda:
                parts = []
                for chunk in plan_chunks(len(batch), self._min_batch, self._max_batch):
                    self._submit(slot, batch[chunk.start : chunk.stop], chunk.run_rows)
                    parts.append(self._collect(slot, chunk.rows))
                    self._maybe_capture(slot, chunk.run_rows)
        finally:
            self._give_back(slot)
        return join_outputs(parts, self._output_row_shape, self.output_spec.dtype)

    def _submit(self, slot: _ExecutionSlot, rows: np.ndarray, run_rows: int) -> None:
        """Queue copy-in, inference and copy-out of ``rows`` (padded to ``run_rows``) on the slot's stream."""
        buffers = slot.buffers
        pinned = buffers.host[self._input_name].rows(run_rows)
        pinned[: len(rows)] = rows
        if run_rows > len(rows):
            pinned[len(rows) :] = 0
        buffers.upload(self._input_name, run_rows)
        self._prepare(slot, run_rows)
        self._launch(slot, run_rows)
        buffers.download(self._output_name, run_rows)

    def _prepare(self, slot: _ExecutionSlot, run_rows: int) -> None:
        """Set the context's input shape and tensor addresses for a run of ``run_rows`` (host side only)."""
        context = slot.context
        if not context.set_input_shape(self._input_name, (run_rows, *self.input_spec.shape[1:])):
            raise EngineRunError(f"the engine rejects a batch of {run_rows}")
        for name, address in slot.buffers.addresses().items():
            context.set_tensor_address(name, address)

    def _launch(self, slot: _ExecutionSlot, run_rows: int) -> None:
        """Queue the engine alone on the slot's stream: its captured graph when there is one, else a direct run."""
        stream = slot.buffers.stream
        graph = slot.graphs.get(run_rows) if slot.last_rows == run_rows else None
        if graph is not None:
            graph.launch(stream)
        elif not slot.context.execute_async_v3(stream.handle):
            raise EngineRunError(f"TensorRT failed to run a batch of {run_rows}; see the log")
        slot.last_rows = run_rows

    def time_compute(self, batch: int, iterations: int, warmup: int = 2) -> list[float]:
        """Seconds of GPU time per call of the engine alone at ``batch`` rows, from CUDA events.

        Events are recorded on the runner's own stream just before and after the
        engine launch (the chunks a call of ``batch`` rows runs); the input stays on
        the GPU and nothing is copied back, so a call's end-to-end time minus this
        is the host<->device copies and the host-side overhead.
        """
        if batch < 1 or iterations < 1 or warmup < 0:
            raise BadInputError(
                f"time_compute needs batch >= 1, iterations >= 1, warmup >= 0 (got {batch}, {iterations}, {warmup})"
            )
        chunks = plan_chunks(batch, self._min_batch, self._max_batch)
        slot = self._acquire()
        try:
            with self._cuda:
                buffers = slot.buffers
                largest = max(chunk.run_rows for chunk in chunks)
                buffers.host[self._input_name].rows(largest)[:] = 0
                buffers.upload(self._input_name, largest)  # once, outside the timed span
                start, end = cuda_memory.Event(), cuda_memory.Event()
                try:
                    seconds = []
                    for index in range(warmup + iterations):
                        total_ms = 0.0
                        for chunk in chunks:
                            self._prepare(slot, chunk.run_rows)
                            start.record(buffers.stream)
                            self._launch(slot, chunk.run_rows)
                            end.record(buffers.stream)
                            end.synchronize()
                            total_ms += end.milliseconds_since(start)
                            self._maybe_capture(slot, chunk.run_rows)
                        if index >= warmup:
                            seconds.append(total_ms / 1e3)
                finally:
                    start.free()
                    end.free()
        finally:
            self._give_back(slot)
        return seconds

    def _collect(self, slot: _ExecutionSlot, rows: int) -> np.ndarray:
        """Wait for the slot's stream and copy the first ``rows`` outputs out of pinned memory."""
        slot.buffers.stream.synchronize()
        return slot.buffers.host[self._output_name].rows(rows).copy()

    def _maybe_capture(self, slot: _ExecutionSlot, run_rows: int) -> None:
        """After a batch size's first direct run (TensorRT's required warm-up), capture a graph for it.

        After a change of batch size the context runs directly once before its
        graph for the new size is replayed, so TensorRT's shape-dependent state is
        always set up by a real enqueue of that shape.
        """
        if not self.cuda_graph or run_rows in slot.graphs:
            return
        stream = slot.buffers.stream
        context = slot.context

        def enqueue() -> None:
            if not context.execute_async_v3(stream.handle):
                raise EngineRunError("execute_async_v3 failed during graph capture")

        slot.graphs[run_rows] = cuda_memory.CudaGraph.capture(stream, enqueue)

    # Many batches.

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Run many batches, yielding each one's outputs in order.

        Two execution slots (two streams, two buffer sets) alternate, so the copies
        of one piece overlap the compute of the previous one. Batches bigger than
        :attr:`max_batch` are split and re-joined as in a single call.
        """
        slots = [self._acquire()]
        try:
            second = self._acquire(wait=False)
            if second is not None:
                slots.append(second)
            yield from self._stream_with(slots, batches)
        finally:
            for slot in slots:
                self._give_back(slot)

    def _stream_with(
        self, slots: Sequence[_ExecutionSlot], batches: Iterable[np.ndarray]
    ) -> Iterator[np.ndarray]:
        def pieces() -> Iterator[tuple[int, np.ndarray, Chunk | None]]:
            for index, batch in enumerate(batches):
                if self._closed:
                    raise EngineRunError("the runner was closed while streaming")
                batch = np.ascontiguousarray(np.asarray(batch))
                self.input_spec.check(batch)
                chunks = plan_chunks(len(batch), self._min_batch, self._max_batch)
                if not chunks:
                    yield index, batch, None
                for chunk in chunks:
                    yield index, batch, chunk

        def submit(
            slot: _ExecutionSlot, piece: tuple[int, np.ndarray, Chunk | None]
        ) -> tuple[int, Chunk | None]:
            index, batch, chunk = piece
            if chunk is not None:
                with self._cuda:
                    self._submit(slot, batch[chunk.start : chunk.stop], chunk.run_rows)
            return index, chunk

        def collect(slot: _ExecutionSlot, pending: tuple[int, Chunk | None]) -> tuple[int, np.ndarray | None]:
            index, chunk = pending
            if chunk is None:
                return index, None
            with self._cuda:
                output = self._collect(slot, chunk.rows)
                self._maybe_capture(slot, chunk.run_rows)
            return index, output

        current: int | None = None
        parts: list[np.ndarray] = []
        for index, output in cuda_memory.pipeline(pieces(), slots, submit, collect):
            if current is not None and index != current:
                yield join_outputs(parts, self._output_row_shape, self.output_spec.dtype)
                parts = []
            current = index
            if output is not None:
                parts.append(output)
        if current is not None:
            yield join_outputs(parts, self._output_row_shape, self.output_spec.dtype)

    # Pool and lifetime.

    @typing.overload
    def _acquire(self) -> _ExecutionSlot: ...

    @typing.overload
    def _acquire(self, wait: bool) -> _ExecutionSlot | None: ...

    def _acquire(self, wait: bool = True) -> _ExecutionSlot | None:
        """Take an execution slot from the pool, waiting for one unless ``wait`` is off (then None if none is free).

        A second slot for streaming is never waited for, so two streaming callers
        cannot each hold one slot while waiting for the other's.
        """
        with self._pool_lock:
            if self._closed:
                raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
            if not wait and self._pool.empty():
                return None
            self._slots_out += 1
        return self._pool.get()

    def _give_back(self, slot: _ExecutionSlot) -> None:
        with self._pool_lock:
            self._slots_out -= 1
            closed_and_idle = self._closed and self._slots_out == 0
            self._pool.put(slot)
        if closed_and_idle:
            self._free_all()

    def _release(self) -> None:
        with self._pool_lock:
            idle = self._slots_out == 0
        if idle:
            self._free_all()

    def _free_all(self) -> None:
        """Free slots, engine, runtime and the CUDA context retention, once, after the last caller."""
        with self._pool_lock:
            if self._finished:
                return
            self._finished = True
        if not hasattr(self, "_cuda"):
            return
        with self._cuda:
            for slot in self._slots:
                slot.free()
            self._slots.clear()
            for name in ("_engine", "_runtime"):
                if hasattr(self, name):
                    delattr(self, name)
        self._cuda.free()


def _deserialize(runtime: trt.Runtime, path: Path) -> trt.ICudaEngine:
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EngineMismatchError(
            f"TensorRT cannot load engine {path} (see the log above); rebuild it on this machine with "
            "sedeploy build-engine MODEL.onnx --backend tensorrt"
        )
    return engine


def _create_context(engine: trt.ICudaEngine) -> trt.IExecutionContext:
    context = engine.create_execution_context()
    if context is None:
        raise EngineRunError("TensorRT could not create an execution context (out of GPU memory?)")
    return context


def _io_names(engine: trt.ICudaEngine) -> tuple[list[str], list[str]]:
    """Names of the engine's input and output tensors."""
    import tensorrt as trt

    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(name)
        else:
            outputs.append(name)
    return inputs, outputs


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[index]) for index in range(len(dims)))
