"""The PyTorch reference runner: the model as trained, from a weights file, an architecture name or a module.

It answers the question every other artifact is checked against: what does the
original model say for this input? Weights load through :mod:`sedeploy.models.checkpoint`
(any supported layout, never unpickling code) into a zoo model from
:mod:`sedeploy.models.registry` or a ``package.module:factory`` model; the architecture
and options come from the weights' own sedeploy record, from an artifact's
metadata (``metadata=``), or are given (``arch=``, ``model_options=``).

On a CUDA device it is a production runner for machines without TensorRT:
``precision`` ``fp32``/``fp16``/``bf16`` (a half or bfloat16 model, FP32 in and out),
pinned host staging and device buffers allocated once per execution slot, the
input copy on a side stream so that in :meth:`TorchRunner.stream` the copy of one
batch overlaps the compute of the previous one (two slots), optional CUDA graphs
(one per batch size and slot, sharing one memory pool per slot), and
:meth:`TorchRunner.time_compute` (CUDA events around the model alone) for ``bench``.
PyTorch's own allocator and streams hold the memory here, not :mod:`~sedeploy.backends.cuda_memory`:
a tensor must come from PyTorch's stream-aware caching allocator to be used safely
on several streams; the slot pool and graph bookkeeping are cuda_memory's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sedeploy.artifacts.metadata import ModelMetadata, Preprocessing, channel_order_for
from sedeploy.backends import cuda_memory
from sedeploy.backends.base import Runner, RunnerClosedError, TensorSpec
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.models.checkpoint import build_model, load_weights, read_checkpoint
from sedeploy.models.complexity import estimate_complexity
from sedeploy.models.defaults import DEFAULT_MAX_BATCH
from sedeploy.models.record import RECORD_NAME, TrainingRecord, find_training_record
from sedeploy.models.registry import ModelDefaults, list_models, model_defaults

logger = logging.getLogger(__name__)

TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""The model's compute type per ``precision``; inputs and outputs stay float32."""
CUDA_MIN_COSINE: dict[str, float] = {"fp32": 0.9995, "fp16": 0.999, "bf16": 0.99}
"""Lowest per-image cosine of the CUDA runner's logits against CPU FP32, with top-1 unchanged, per ``precision``
(FP32 may run convolutions in TF32). The GPU tests and ``benchmarks/gpu_check.py`` judge by it."""


class TorchRunner(Runner):
    """Runs a PyTorch model in eval mode under ``torch.inference_mode`` (thread-safe for concurrent callers).

    ``source``: a weights file (safetensors or PyTorch state dict), a zoo
    architecture name (random weights, logged as a warning), a
    ``package.module:factory`` target, or an ``nn.Module``. ``metadata``: the
    artifact's :class:`ModelMetadata` whose ``arch`` and ``options`` build the
    model and whose preprocessing the runner uses; without it they are derived
    from the model's registry defaults as export does. ``weights_match`` is
    False when the metadata records a weights hash that differs from the file's.

    A weights file with a training record beside it (``model.json``) runs at the record's input size,
    preprocessing and labels; one without a record needs ``metadata=`` (its size would be a guess). A zoo
    name alone builds random weights only with ``random_weights=True``.

    ``precision``: ``fp32``, ``fp16`` (CUDA only) or ``bf16``: the model is cast, the
    input and output stay float32. On CUDA, ``slots`` execution slots (pinned
    staging, device input, a copy and a compute stream each) serve that many
    concurrent callers, and ``cuda_graph=True`` replays a CUDA graph of the model
    once a batch size has run directly (one graph per size and slot, kept; a
    failed capture is said at WARNING and the model runs directly). ``close()``
    refuses new calls at once and frees the model when the last caller gives its
    slot back, so a graph replaying in another thread never reads freed weights.
    """

    backend = "torch"

    def __init__(
        self,
        source: str | os.PathLike[str] | nn.Module,
        *,
        arch: str | None = None,
        metadata: ModelMetadata | None = None,
        model_options: Mapping[str, Any] | None = None,
        layout: str = "auto",
        device: str | None = None,
        max_batch: int | None = None,
        random_weights: bool = False,
        precision: str = "fp32",
        cuda_graph: bool = False,
        slots: int = 2,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        if precision not in TORCH_DTYPES:
            raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(TORCH_DTYPES)}")
        if slots < 1:
            raise ConfigError(f"slots must be at least 1, got {slots}")
        self._device = _torch_device(device)
        if self._device.type != "cuda":
            if precision == "fp16":
                raise ConfigError("precision fp16 runs on a CUDA device; use bf16 on a CPU, or device='cuda'")
            if cuda_graph:
                raise ConfigError("cuda_graph=True needs a CUDA device; load with device='cuda'")
        self.precision = precision
        self._dtype = TORCH_DTYPES[precision]
        self._executor: CudaExecutor | None = None
        self.weights_path: Path | None = None
        self.weights_match: bool | None = None
        self.record: TrainingRecord | None = None
        self._random_weights = random_weights
        model = self._build(source, arch, metadata, dict(model_options or {}), layout)
        model.eval()
        # Metadata first: its complexity count traces the model in float32.
        if metadata is None and self.record is not None:
            metadata = _record_metadata(model, self.record, max_batch)
        elif metadata is None and self.weights_path is not None:
            raise ConfigError(
                f"{self.weights_path} has no training record ({RECORD_NAME} beside it) that says its input size "
                "and preprocessing; export it with sedeploy export (img_size given) and load the ONNX, or pass "
                "metadata= (sedeploy.read_metadata of its exported ONNX)"
            )
        self.metadata = metadata if metadata is not None else _derived_metadata(model, arch, max_batch)
        model.to(self._device, dtype=self._dtype)
        self._model: nn.Module | None = model
        limit = max_batch or self.metadata.max_batch
        self.input_spec = TensorSpec(
            self.metadata.input_name, "float32", (None, *self.metadata.input_size), max_batch=limit
        )
        self.output_spec = TensorSpec(
            self.metadata.output_name, "float32", (None, self.metadata.num_classes), max_batch=limit
        )
        self.provider = f"PyTorch {torch.__version__} on {self._device}" + (
            f" ({precision})" if precision != "fp32" else ""
        )
        if self._device.type == "cuda":
            self.gpu_name = torch.cuda.get_device_name(self._device)
            """The CUDA device's name: bench looks its published peak up by it."""
            self._attach_executor(TorchCudaOps(self._device), slots=slots, cuda_graph=cuda_graph)

    def _attach_executor(self, ops: Any, *, slots: int, cuda_graph: bool) -> CudaExecutor:
        """Run through a :class:`CudaExecutor` on ``ops`` (``torch.cuda``; a recording fake where no GPU exists)."""
        metadata = self.metadata
        assert metadata is not None  # set by __init__ before this is called
        self._executor = CudaExecutor(
            self._forward,
            (self.max_batch, *metadata.input_size),
            metadata.num_classes,
            slots=slots,
            cuda_graph=cuda_graph,
            ops=ops,
            on_free=self._drop_model,
        )
        return self._executor

    def _build(
        self,
        source: str | os.PathLike[str] | nn.Module,
        arch: str | None,
        metadata: ModelMetadata | None,
        options: dict[str, Any],
        layout: str,
    ) -> nn.Module:
        if isinstance(source, nn.Module):
            return source
        if metadata is not None:
            arch = arch or metadata.arch
            options = options or dict(metadata.options)
        path = Path(source)
        if not path.is_file():
            name = str(source)
            if path.suffix or os.sep in name:
                raise BadInputError(f"weights file {path} does not exist; check the path")
            if not self._random_weights:
                raise ConfigError(
                    f"{name} is an architecture without weights; give its weights file, or pass "
                    "random_weights=True for a model with random weights (speed only, not answers)"
                )
            logger.info("%s: no weights given, so the PyTorch model has random weights", name)
            return _create(name, None, options, layout)[0]
        self.weights_path = path
        self.record = find_training_record(path)
        if self.record is not None and metadata is None:
            arch = arch or self.record.arch
            options = options or dict(self.record.options)
        if arch is None:
            arch = read_checkpoint(path).arch
        if arch is None:
            raise ConfigError(
                f"{path} does not say which architecture it holds; give arch= (or verify --reference with an "
                "artifact whose metadata names it)"
            )
        model, sha256 = _create(arch, path, options, layout)
        if metadata is not None and metadata.weights_sha256 is not None and sha256 is not None:
            self.weights_match = sha256 == metadata.weights_sha256
            if not self.weights_match:
                logger.warning(
                    "%s is not the weights file the artifact was exported from (sha256 %s... != %s...)",
                    path,
                    sha256[:12],
                    metadata.weights_sha256[:12],
                )
        return model

    def __enter__(self) -> TorchRunner:
        return self

    @property
    def max_batch(self) -> int:
        return self.input_spec.max_batch or DEFAULT_MAX_BATCH

    def _forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """The model on a float32 batch already on the device: cast to the compute type, logits as float32."""
        model = self._model
        if model is None:
            raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
        with torch.inference_mode():
            return model(tensor.to(self._dtype)).float()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self._executor is not None:
            return self._executor.run(batch)
        tensor = torch.from_numpy(batch if batch.flags.writeable else batch.copy()).to(self._device)
        return self._forward(tensor).cpu().numpy()

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Run many batches, yielding each one's logits in order; on CUDA two slots overlap copies and compute."""
        if self._executor is None:
            for batch in batches:
                yield self(batch)
            return

        def checked() -> Iterator[np.ndarray]:
            for batch in batches:
                if self._closed:
                    raise RunnerClosedError("the runner was closed while streaming; load the model again")
                array = np.ascontiguousarray(self._as_input(batch))
                self.input_spec.check(array)
                yield array

        yield from self._executor.stream(checked())

    @property
    def time_compute(self) -> Callable[..., list[float]] | None:
        """``time_compute(batch, iterations, warmup=2)``: GPU seconds of the model alone per call, on CUDA only.

        None on a CPU, so ``bench`` (which times GPU-only beside end to end for
        runners that have it) skips it there. The input stays on the GPU and nothing
        is copied back, so a call's end-to-end time minus this is the copies and host
        overhead, as for TensorRT.
        """
        return self._time_compute if self._executor is not None else None

    def _time_compute(self, batch: int, iterations: int, warmup: int = 2) -> list[float]:
        if self._executor is None:
            raise ConfigError("time_compute needs a CUDA device; load with device='cuda'")
        if batch < 1 or iterations < 1 or warmup < 0:
            raise BadInputError(
                f"time_compute needs batch >= 1, iterations >= 1, warmup >= 0 (got {batch}, {iterations}, {warmup})"
            )
        return self._executor.time_compute(batch, iterations, warmup)

    def _release(self) -> None:
        if self._executor is None:
            self._drop_model()
        else:
            self._executor.close()  # the model goes at the executor's last give-back (_drop_model)

    def _drop_model(self) -> None:
        """Let the model's weights go: after every slot is back, so no graph replay can still read them."""
        self._model = None


def _create(
    arch: str, weights: Path | None, options: dict[str, Any], layout: str
) -> tuple[nn.Module, str | None]:
    """A zoo model (``build_model``) or a ``package.module:factory`` model with ``weights`` loaded, and their sha256."""
    if ":" in arch:
        from sedeploy.models.factory import load_model_factory

        model = load_model_factory(arch, **options)
        if weights is None:
            return model, None
        checkpoint = read_checkpoint(weights)
        load_weights(model, checkpoint.state_dict, str(weights))
        return model, checkpoint.sha256
    if arch not in list_models():
        raise ConfigError(
            f"unknown architecture {arch!r}; give a weights file, a package.module:factory, or one of: "
            f"{', '.join(list_models())}"
        )
    model, converted = build_model(arch, weights, layout=layout, **options)
    return model, converted.sha256 if converted is not None else None


def _torch_device(device: str | None) -> torch.device:
    try:
        chosen = torch.device(device or "cpu")
    except RuntimeError:
        raise ConfigError(f"unknown PyTorch device {device!r}; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(
            f"device {device!r} needs CUDA, which this PyTorch cannot use; load with device='cpu'"
        )
    return chosen


def _record_metadata(model: nn.Module, record: TrainingRecord, max_batch: int | None) -> ModelMetadata:
    """Metadata from the checkpoint's training record: its input size, preprocessing and labels."""
    from sedeploy._version import __version__

    complexity = estimate_complexity(model, record.input_size)
    defaults = model_defaults(model)
    return ModelMetadata(
        arch=getattr(model, "model_name", None) or record.arch,
        options=dict(getattr(model, "model_options", record.options)),
        input_size=record.input_size,
        num_classes=defaults.num_classes if defaults is not None else len(record.labels or ()),
        preprocessing=record.preprocessing,
        params=complexity.params,
        macs=complexity.macs,
        opset=0,
        max_batch=max_batch or DEFAULT_MAX_BATCH,
        sedeploy_version=__version__,
        channel_order=channel_order_for(record.in_chans),
        labels=record.labels,
    )


def _derived_metadata(model: nn.Module, arch: str | None, max_batch: int | None) -> ModelMetadata:
    """Metadata as export would write it, from the model's registry defaults (opset 0: not exported)."""
    from sedeploy._version import __version__

    defaults: ModelDefaults | None = model_defaults(model)
    if defaults is None:
        raise ConfigError(
            f"{type(model).__name__} has no sedeploy defaults (input size, preprocessing); "
            "pass metadata= from its exported ONNX (sedeploy.read_metadata)"
        )
    complexity = estimate_complexity(model, defaults.input_size)
    return ModelMetadata(
        arch=getattr(model, "model_name", None) or arch or type(model).__name__,
        options=dict(getattr(model, "model_options", {})),
        input_size=defaults.input_size,
        num_classes=defaults.num_classes,
        preprocessing=Preprocessing.from_defaults(defaults),
        params=complexity.params,
        macs=complexity.macs,
        opset=0,
        max_batch=max_batch or DEFAULT_MAX_BATCH,
        sedeploy_version=__version__,
        channel_order=channel_order_for(defaults.input_size[0]),
        labels=defaults.labels,
    )


# CUDA execution: slots, streams, graphs.


class TorchCudaOps:
    """The ``torch.cuda`` calls :class:`CudaExecutor` makes, in one object (tests replace it: no GPU there)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def stream(self) -> Any:
        return torch.cuda.Stream(device=self.device)

    def event(self, timing: bool = False) -> Any:
        with torch.cuda.device(self.device):  # an event belongs to the device current when it is made
            return torch.cuda.Event(enable_timing=timing)

    def pinned(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32, pin_memory=True)

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def use(self, stream: Any) -> AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def synchronize(self) -> None:
        """Wait for the whole device (the buffers' zero-fill ran on the default stream)."""
        torch.cuda.synchronize(self.device)

    def graph_pool(self) -> Any:
        """A memory pool the graphs of one slot share (one per slot: its replays never overlap in time)."""
        return torch.cuda.graph_pool_handle()

    def capture(
        self, forward: Callable[[], torch.Tensor], stream: Any, pool: Any = None
    ) -> _TorchGraph | None:
        """A CUDA graph of ``forward()`` on ``stream`` in thread-local capture mode, or None (said at WARNING).

        Graphs of one slot share ``pool``: each keeps its output tensor alive, and a
        slot's replays run one after another on its compute stream, each output copied
        out before the next replay, so one graph's scratch memory reused by another is
        never read late.
        """
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                output = forward()
        except RuntimeError as error:
            cuda_memory.warn_once(
                f"cuda_graph=True, but the model cannot be captured ({error}); running it directly"
            )
            return None
        return _TorchGraph(graph, output)


class _TorchGraph:
    """A captured model call: ``replay()`` refills ``output`` from the slot's device input."""

    def __init__(self, graph: Any, output: torch.Tensor) -> None:
        self.graph = graph
        self.output = output

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.output

    def free(self) -> None:
        if hasattr(self.graph, "reset"):
            self.graph.reset()


@dataclass
class _TorchSlot:
    """One caller's staging: pinned input/output, device input, a copy stream and a compute stream."""

    host_input: torch.Tensor
    host_output: torch.Tensor
    device_input: torch.Tensor
    copy_stream: Any
    compute_stream: Any
    copied: Any
    done: Any
    graph: cuda_memory.GraphSlot[_TorchGraph] = field(
        default_factory=lambda: cuda_memory.GraphSlot(per_size=True)
    )
    pool: Any = None
    """The memory pool this slot's graphs share (made at the first capture)."""

    def synchronize(self) -> None:
        self.copy_stream.synchronize()
        self.compute_stream.synchronize()


class CudaExecutor:
    """Runs ``forward`` on a CUDA device through pinned staging, a side-stream input copy and optional graphs.

    ``input_shape`` is the largest batch's shape; ``forward`` takes a float32 device
    tensor and returns float32 logits on the device. Slots come from a
    :class:`~sedeploy.backends.cuda_memory.SlotPool`; every slot's streams are
    synchronised before it is reused by another caller or freed. ``on_free`` runs
    once everything is freed, after the last slot is back (the runner drops its model there).
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        input_shape: tuple[int, ...],
        classes: int,
        *,
        slots: int,
        cuda_graph: bool,
        ops: Any,
        on_free: Callable[[], None] | None = None,
    ) -> None:
        self._forward = forward
        self._on_free = on_free
        self.max_batch = input_shape[0]
        self.cuda_graph = cuda_graph
        self._ops = ops
        self._slots = [
            _TorchSlot(
                host_input=ops.pinned(input_shape),
                host_output=ops.pinned((self.max_batch, classes)),
                device_input=ops.empty(input_shape),
                copy_stream=ops.stream(),
                compute_stream=ops.stream(),
                copied=ops.event(),
                done=ops.event(),
            )
            for _ in range(slots)
        ]
        ops.synchronize()  # PyTorch's streams do not wait for the default stream that filled the buffers
        self._pool = cuda_memory.SlotPool(self._slots, self._closed_error)
        self._free_lock = threading.Lock()
        self._freed = False

    @staticmethod
    def _closed_error() -> Exception:
        return RunnerClosedError("this torch runner is closed; load the model again")

    @property
    def slots(self) -> list[_TorchSlot]:
        return list(self._slots)

    def _submit(self, slot: _TorchSlot, batch: np.ndarray) -> int:
        """Queue copy-in (side stream), model and copy-out (compute stream) of ``batch``; returns its rows."""
        rows = len(batch)
        slot.host_input[:rows].numpy()[...] = batch
        with self._ops.use(slot.copy_stream):
            slot.device_input[:rows].copy_(slot.host_input[:rows], non_blocking=True)
            slot.copied.record(slot.copy_stream)
        slot.compute_stream.wait_event(slot.copied)
        with self._ops.use(slot.compute_stream):
            logits = self._launch(slot, rows)
            slot.host_output[:rows].copy_(logits, non_blocking=True)
            slot.done.record(slot.compute_stream)
        return rows

    def _launch(self, slot: _TorchSlot, rows: int) -> torch.Tensor:
        """The model on the slot's first ``rows`` device rows: its graph where recorded for ``rows``, else directly."""
        graph = slot.graph.launchable(rows) if self.cuda_graph else None
        if graph is not None:
            slot.graph.replays += 1
            return graph.replay()
        return self._forward(slot.device_input[:rows])

    def _collect(self, slot: _TorchSlot, rows: int) -> np.ndarray:
        slot.done.synchronize()
        output = slot.host_output[:rows].numpy().copy()
        self._maybe_record(slot, rows)
        return output

    def _maybe_record(self, slot: _TorchSlot, rows: int) -> None:
        """After ``rows`` ran directly once, record the slot's graph for that size (graphs of other sizes stay)."""
        if not self.cuda_graph or not slot.graph.after_run(rows):
            return
        slot.synchronize()
        if slot.pool is None:
            slot.pool = self._ops.graph_pool()
        view = slot.device_input[:rows]
        slot.graph.record(
            rows, lambda: self._ops.capture(lambda: self._forward(view), slot.compute_stream, slot.pool)
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One batch of at most ``max_batch`` rows."""
        slot = self._pool.acquire()
        assert slot is not None
        try:
            rows = self._submit(slot, batch)
            return self._collect(slot, rows)
        finally:
            self._give_back(slot)

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each batch's logits in order, two slots alternating; batches above ``max_batch`` are split and joined."""
        slots = [self._pool.acquire()]
        second = None
        try:
            second = self._pool.acquire(wait=False)
            taken = [slot for slot in (*slots, second) if slot is not None]

            def pieces() -> Iterator[tuple[int, np.ndarray]]:
                for index, batch in enumerate(batches):
                    if len(batch) == 0:
                        yield index, batch
                    for start in range(0, len(batch), self.max_batch):
                        yield index, batch[start : start + self.max_batch]

            def submit(slot: _TorchSlot, piece: tuple[int, np.ndarray]) -> tuple[int, int]:
                index, rows = piece
                return index, self._submit(slot, rows) if len(rows) else 0

            def collect(slot: _TorchSlot, pending: tuple[int, int]) -> tuple[int, np.ndarray]:
                index, rows = pending
                if rows == 0:
                    return index, slot.host_output[:0].numpy().copy()
                return index, self._collect(slot, rows)

            current: int | None = None
            parts: list[np.ndarray] = []
            for index, output in cuda_memory.pipeline(pieces(), taken, submit, collect):
                if current is not None and index != current:
                    yield np.concatenate(parts, axis=0)
                    parts = []
                current = index
                parts.append(output)
            if current is not None:
                yield np.concatenate(parts, axis=0)
        finally:
            for slot in (*slots, second):
                if slot is not None:
                    self._give_back(slot)

    def time_compute(self, batch: int, iterations: int, warmup: int) -> list[float]:
        """GPU seconds of the model alone per call of ``batch`` rows (pieces of at most ``max_batch``)."""
        sizes = [min(self.max_batch, batch - start) for start in range(0, batch, self.max_batch)]
        slot = self._pool.acquire()
        assert slot is not None
        start, end = self._ops.event(timing=True), self._ops.event(timing=True)
        try:
            seconds = []
            for index in range(warmup + iterations):
                total_ms = 0.0
                for rows in sizes:
                    with self._ops.use(slot.compute_stream):
                        start.record(slot.compute_stream)
                        self._launch(slot, rows)
                        end.record(slot.compute_stream)
                    end.synchronize()
                    total_ms += float(start.elapsed_time(end))
                    self._maybe_record(slot, rows)
                if index >= warmup:
                    seconds.append(total_ms / 1e3)
            return seconds
        finally:
            self._give_back(slot)

    def _give_back(self, slot: _TorchSlot) -> None:
        try:
            slot.synchronize()
        finally:
            if self._pool.release(slot):
                self._free()

    def close(self) -> None:
        """Refuse new calls; free everything now if idle, else when the last caller gives its slot back."""
        if self._pool.close():
            self._free()

    def _free(self) -> None:
        with self._free_lock:
            if self._freed:
                return
            self._freed = True
        for slot in self._slots:
            slot.synchronize()
        for slot in self._slots:
            slot.graph.free()
        self._slots.clear()
        if self._on_free is not None:
            self._on_free()
