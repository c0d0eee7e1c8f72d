"""TensorRT runner: checks the manifest before TensorRT sees the plan, then runs batches with pinned memory.

Pinned host buffers and device buffers are allocated once for the profile's largest batch, from a small pool of
execution contexts (:class:`~sedeploy.backends.cuda_memory.SlotPool`); :meth:`TensorRTRunner.stream`
double-buffers many batches. Runs on either CUDA implementation (pycuda or cuda-python).
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
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
    dla_problem,
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
    """One execution context with its own stream, buffers and CUDA graph: what one caller uses at a time."""

    context: trt.IExecutionContext
    buffers: cuda_memory.BufferSet
    profile: int = 0
    graph: cuda_memory.GraphSlot[cuda_memory.CudaGraph] = field(default_factory=cuda_memory.GraphSlot)
    last_rows: int | None = None
    """Batch size of the context's last run."""

    def synchronize(self) -> None:
        """Wait for everything this slot enqueued (copies, engine, graph replays)."""
        self.buffers.stream.synchronize()

    def free(self) -> None:
        """Wait for the slot's stream, then free graph, buffers and context, in that order."""
        try:
            self.synchronize()
        finally:
            self.graph.free()
            self.buffers.free()
            del self.context


class TensorRTRunner(Runner):
    """Runs a TensorRT engine built by :func:`build_engine`: numpy in, numpy out, pinned memory in between.

    ``contexts`` execution contexts (each with its own stream and buffers, and its
    own optimization profile where the engine has that many) serve that many
    concurrent callers; more callers wait. ``cuda_graph=True`` keeps one CUDA graph
    per context, captured for a batch size once that size has run directly twice in a
    row (a context holds one shape at a time; alternating sizes run directly and never
    re-capture); where capture is impossible (pycuda, a failed capture) it says so at
    WARNING and launches directly. ``device`` is the CUDA
    device index. The manifest is required; ``verify_hash=False`` skips hashing the
    engine against it (the version, GPU and DLA checks still run). Nothing is freed
    while GPU work that uses it may be in flight: every slot's stream is
    synchronised before it is reused by another caller or freed.
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
                f"engine {self.engine_path} does not exist; build it with sedeploy build-engine, backend tensorrt",
                params=("backend",),
            )
        # The manifest is checked before TensorRT is needed: a wrong file is named as such on any machine.
        # verify_hash=False: hashing a large engine costs a read of the file; hot paths may skip it.
        manifest = checked_manifest(self.engine_path, verify_hash=verify_hash, required=True)
        assert manifest is not None  # required=True raises instead of returning None
        self.manifest = manifest
        require_tensorrt()
        import tensorrt as trt

        self.cuda_graph = cuda_graph
        self._pool: cuda_memory.SlotPool[_ExecutionSlot] | None = None
        self._free_lock = threading.Lock()
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
                f"engine {self.engine_path} {problem}; rebuild it on this machine with sedeploy build-engine, "
                "backend tensorrt",
                params=("backend",),
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
        except BaseException as error:
            # The traceback keeps _load's frame, whose locals (runtime, engine, execution contexts) would
            # outlive the context's release below: clear those frames first.
            traceback.clear_frames(error.__traceback__)
            self._free_all()
            raise
        self._pool = cuda_memory.SlotPool(self._slots, self._closed_error)

    def _closed_error(self) -> Exception:
        return RunnerClosedError(f"this {self.backend} runner is closed; load the model again")

    def _load(self, contexts: int) -> None:
        import tensorrt as trt

        runtime = trt.Runtime(make_trt_logger())
        engine_info = self.manifest.engine or {}
        if engine_info.get("version_compat"):
            runtime.engine_host_code_allowed = True
        dla_core = engine_info.get("dla_core")
        if dla_core is not None:
            problem = dla_problem(engine_info, runtime.num_DLA_cores)
            if problem is not None:
                raise EngineMismatchError(f"engine {self.engine_path} {problem}")
            runtime.DLA_core = int(dla_core)
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
        ranges = [
            tuple(_dims(dims) for dims in engine.get_tensor_profile_shape(self._input_name, index))
            for index in range(max(int(engine.num_optimization_profiles), 1))
        ]
        profiles = sum(1 for shapes in ranges if shapes == ranges[0])
        if profiles != len(ranges):
            logger.info("engine profiles cover different shapes; every context uses profile 0")
            profiles = 1
        if contexts > profiles:
            logger.info(
                "%d execution contexts share %d optimization profile(s) (TensorRT's profile sharing, which "
                "sedeploy's builder turns on)",
                contexts,
                profiles,
            )
        min_shape, _, max_input_shape = ranges[0]
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
            slot = _ExecutionSlot(context, cuda_memory.BufferSet(layouts), profile=index % profiles)
            self._slots.append(slot)
            if slot.profile != 0:
                if not context.set_optimization_profile_async(slot.profile, slot.buffers.stream.handle):
                    raise EngineRunError(f"TensorRT refused optimization profile {slot.profile}")
                slot.synchronize()

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
        """Set the context's input shape and tensor addresses for a run of ``run_rows`` (host side only).

        The output shape TensorRT derives is checked against the buffers, so a
        wrong engine never writes past them.
        """
        context = slot.context
        if not context.set_input_shape(self._input_name, (run_rows, *self.input_spec.shape[1:])):
            raise EngineRunError(f"the engine rejects a batch of {run_rows}")
        expected = (run_rows, *self._output_row_shape)
        actual = _dims(context.get_tensor_shape(self._output_name))
        if actual != expected:
            raise EngineRunError(
                f"the engine gives output {self._output_name!r} shape {actual} for a batch of {run_rows}, "
                f"not {expected}; rebuild it with sedeploy build-engine, backend tensorrt",
                params=("backend",),
            )
        for name, address in slot.buffers.addresses().items():
            if not context.set_tensor_address(name, address):
                raise EngineRunError(f"TensorRT refused the device address of tensor {name!r}")

    def _launch(self, slot: _ExecutionSlot, run_rows: int) -> None:
        """Queue the engine alone on the slot's stream: its graph when recorded for this size, else a direct run."""
        stream = slot.buffers.stream
        graph = slot.graph.launchable(run_rows) if self.cuda_graph else None
        if graph is not None:
            graph.launch(stream)
            slot.graph.replays += 1
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
                    slot.synchronize()
                    start.free()
                    end.free()
        finally:
            self._give_back(slot)
        return seconds

    def _collect(self, slot: _ExecutionSlot, rows: int) -> np.ndarray:
        """Wait for the slot's stream and copy the first ``rows`` outputs out of pinned memory."""
        slot.synchronize()
        return slot.buffers.host[self._output_name].rows(rows).copy()

    def _maybe_capture(self, slot: _ExecutionSlot, run_rows: int) -> None:
        """Once a batch size has run directly twice in a row, record the slot's one graph for it.

        The direct runs are TensorRT's required warm-up (its shape-dependent state is
        set up by a real enqueue of that shape); waiting for a repeat keeps a call that
        alternates sizes (40 rows at MAX 32: 32, then 8) from re-capturing every time.
        A graph of another size stays until the new size is captured.
        """
        if not self.cuda_graph or not slot.graph.after_run(run_rows):
            return
        stream = slot.buffers.stream
        context = slot.context
        slot.synchronize()  # the direct run is finished before capture starts

        def enqueue() -> None:
            if not context.execute_async_v3(stream.handle):
                raise EngineRunError("execute_async_v3 failed during graph capture")

        slot.graph.record(run_rows, lambda: cuda_memory.CudaGraph.capture(stream, enqueue))

    # Many batches.

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Run many batches, yielding each one's outputs in order.

        Two execution slots (two streams, two buffer sets) alternate, so the copies
        of one piece overlap the compute of the previous one. Batches bigger than
        :attr:`max_batch` are split and re-joined as in a single call. Leaving the
        loop early, a bad batch, or ``close()`` from another thread waits for the
        work already enqueued before any buffer is reused or freed. Calling the
        runner inside the loop on the same thread raises
        :class:`~sedeploy.backends.cuda_memory.PoolDeadlockError` when no slot is left.
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
                    raise RunnerClosedError("the runner was closed while streaming; load the model again")
                batch = np.ascontiguousarray(self._as_input(batch))
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
        cannot each hold one slot while waiting for the other's; a wait that could
        never end raises instead (see :class:`~sedeploy.backends.cuda_memory.SlotPool`).
        """
        if self._pool is None:
            raise self._closed_error()
        return self._pool.acquire(wait)

    def _give_back(self, slot: _ExecutionSlot) -> None:
        """Return ``slot`` after its stream is idle; free everything if the runner was closed meanwhile."""
        try:
            with self._cuda:
                slot.synchronize()
        finally:
            assert self._pool is not None  # a slot was taken from it
            if self._pool.release(slot):
                self._free_all()

    def _release(self) -> None:
        if self._pool is None or self._pool.close():
            self._free_all()

    def _free_all(self) -> None:
        """Free slots, engine, runtime and the CUDA context retention, once, after the last caller.

        Order: every stream synchronised, then graphs, buffers and execution
        contexts, then the engine, the runtime, and the context retention last.
        """
        with self._free_lock:
            if self._finished:
                return
            self._finished = True
        if not hasattr(self, "_cuda"):
            return
        try:
            with self._cuda:
                for slot in self._slots:
                    slot.synchronize()
                for slot in self._slots:
                    slot.free()
                self._slots.clear()
                for name in ("_engine", "_runtime"):
                    if hasattr(self, name):
                        delattr(self, name)
        finally:
            self._cuda.free()


def _deserialize(runtime: trt.Runtime, path: Path) -> trt.ICudaEngine:
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EngineMismatchError(
            f"TensorRT cannot load engine {path} (see the log above); rebuild it on this machine with "
            "sedeploy build-engine, backend tensorrt",
            params=("backend",),
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
