"""The PyTorch runner's CUDA path on CPU: the real executor (slots, side-stream copies, double buffering, CUDA
graphs per slot, time_compute) with only ``torch.cuda`` replaced by a recording fake; and the CPU-side options."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from sedeploy.backends import cuda_memory
from sedeploy.backends.base import RunnerClosedError
from sedeploy.backends.torch import CudaExecutor, TorchRunner
from sedeploy.errors import ConfigError

CLASSES = 4
SHAPE = (8, 2, 3, 3)


class _Stream:
    def __init__(self, log: list[tuple[str, Any]], name: str) -> None:
        self.log = log
        self.name = name

    def wait_event(self, event: _Event) -> None:
        self.log.append(("wait", self.name, event.name))

    def synchronize(self) -> None:
        self.log.append(("sync", self.name))


class _Event:
    def __init__(self, log: list[tuple[str, Any]], name: str) -> None:
        self.log = log
        self.name = name

    def record(self, stream: _Stream) -> None:
        self.log.append(("record", self.name, stream.name))

    def synchronize(self) -> None:
        self.log.append(("event-sync", self.name))

    def elapsed_time(self, end: _Event) -> float:
        return 2.0


class _Graph:
    def __init__(self, forward: Callable[[], torch.Tensor], log: list[tuple[str, Any]]) -> None:
        self.forward = forward
        self.output = forward()
        self.log = log
        self.freed = False

    def replay(self) -> torch.Tensor:
        self.log.append(("replay",))
        self.output.copy_(self.forward())
        return self.output

    def free(self) -> None:
        self.freed = True


class FakeOps:
    """``torch.cuda`` for a machine without a GPU: CPU tensors, streams that run in order, graphs that re-run."""

    def __init__(self, capture_works: bool = True) -> None:
        self.log: list[tuple[str, Any]] = []
        self.current = "default"
        self.capture_works = capture_works
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}{self._count}"

    def stream(self) -> _Stream:
        return _Stream(self.log, self._name("stream"))

    def event(self, timing: bool = False) -> _Event:
        return _Event(self.log, self._name("event"))

    def pinned(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape)

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape)

    def synchronize(self) -> None:
        self.log.append(("device-sync",))

    @contextmanager
    def use(self, stream: _Stream) -> Iterator[None]:
        previous, self.current = self.current, stream.name
        try:
            yield
        finally:
            self.current = previous

    def capture(self, forward: Callable[[], torch.Tensor], stream: _Stream) -> _Graph | None:
        self.log.append(("capture", stream.name))
        if not self.capture_works:
            cuda_memory._warn_once(
                "cuda_graph=True, but the model cannot be captured (fake); running it directly"
            )
            return None
        return _Graph(forward, self.log)


def _executor(ops: FakeOps, **options: Any) -> tuple[CudaExecutor, list[tuple[str, int]]]:
    weights = torch.arange(CLASSES * 18, dtype=torch.float32).reshape(CLASSES, 18) / 100
    calls: list[tuple[str, int]] = []

    def forward(tensor: torch.Tensor) -> torch.Tensor:
        calls.append((ops.current, len(tensor)))
        return tensor.reshape(len(tensor), -1) @ weights.T

    options.setdefault("slots", 2)
    options.setdefault("cuda_graph", False)
    return CudaExecutor(forward, SHAPE, CLASSES, ops=ops, **options), calls


def _expected(batch: np.ndarray) -> np.ndarray:
    weights = np.arange(CLASSES * 18, dtype=np.float32).reshape(CLASSES, 18) / 100
    return batch.reshape(len(batch), 18) @ weights.T


def _batch(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, *SHAPE[1:])).astype(np.float32)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_memory, "_warned", set())


def test_copy_on_the_side_stream_then_compute_waits_for_it() -> None:
    ops = FakeOps()
    executor, calls = _executor(ops)
    batch = _batch(5)
    np.testing.assert_allclose(executor.run(batch), _expected(batch), rtol=1e-5, atol=1e-5)
    slot = executor.slots[0]
    copy, compute = slot.copy_stream.name, slot.compute_stream.name
    assert calls == [(compute, 5)], "the model must run on the slot's compute stream"
    record_copied = ops.log.index(("record", slot.copied.name, copy))
    wait = ops.log.index(("wait", compute, slot.copied.name))
    assert record_copied < wait < ops.log.index(("event-sync", slot.done.name))


def test_stream_alternates_two_slots_and_keeps_order() -> None:
    ops = FakeOps()
    executor, calls = _executor(ops)
    batches = [_batch(rows, rows) for rows in (3, 8, 20, 0, 1)]
    outputs = list(executor.stream(iter(batches)))
    assert [len(output) for output in outputs] == [3, 8, 20, 0, 1]
    for batch, output in zip(batches, outputs, strict=True):
        np.testing.assert_allclose(output, _expected(batch), rtol=1e-5, atol=1e-5)
    streams = [stream for stream, _ in calls]
    first, second = (slot.compute_stream.name for slot in executor.slots)
    assert streams[:5] == [first, second, first, second, first], "pieces must alternate between the two slots"
    # Slot 2's copy is queued before slot 1's result is waited for: the overlap.
    second_copy = next(
        i
        for i, entry in enumerate(ops.log)
        if entry == ("record", executor.slots[1].copied.name, executor.slots[1].copy_stream.name)
    )
    first_wait = ops.log.index(("event-sync", executor.slots[0].done.name))
    assert second_copy < first_wait


def test_graph_recorded_after_a_direct_run_replayed_and_rerecorded_on_a_new_size() -> None:
    ops = FakeOps()
    executor, _ = _executor(ops, slots=1, cuda_graph=True)
    for rows in (4, 4, 4, 6, 6, 4):
        batch = _batch(rows, rows)
        np.testing.assert_allclose(executor.run(batch), _expected(batch), rtol=1e-5, atol=1e-5)
    graph = executor.slots[0].graph
    assert graph.captures == 3 and graph.rows == 4 and graph.replays == 3
    assert [entry[0] for entry in ops.log].count("replay") == 3


def test_failed_capture_warns_once_and_runs_directly(caplog: pytest.LogCaptureFixture) -> None:
    ops = FakeOps(capture_works=False)
    executor, calls = _executor(ops, slots=1, cuda_graph=True)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            batch = _batch(2)
            np.testing.assert_allclose(executor.run(batch), _expected(batch), rtol=1e-5, atol=1e-5)
    assert len(calls) == 3 and [entry[0] for entry in ops.log].count("capture") == 1
    assert sum("cannot be captured" in record.message for record in caplog.records) == 1


def test_time_compute_times_the_model_alone_with_events() -> None:
    ops = FakeOps()
    executor, calls = _executor(ops)
    seconds = executor.time_compute(20, iterations=2, warmup=1)
    assert seconds == [0.006, 0.006]  # pieces of 8, 8, 4 at 2 ms each
    assert [rows for _, rows in calls] == [8, 8, 4] * 3


def test_close_while_streaming_defers_the_free_and_refuses_new_calls() -> None:
    ops = FakeOps(capture_works=True)
    executor, _ = _executor(ops, cuda_graph=True)
    outputs = executor.stream(iter([_batch(2, seed) for seed in range(4)]))
    next(outputs)
    executor.close()
    assert executor.slots, "slots were freed while a stream held them"
    with pytest.raises(RunnerClosedError):
        executor.run(_batch(1))
    outputs.close()
    assert not executor.slots
    syncs = [entry for entry in ops.log if entry[0] == "sync"]
    assert len(syncs) >= 4  # both streams of both slots, before the free


# The runner itself, on CPU.


def test_fp16_and_graphs_need_cuda() -> None:
    with pytest.raises(ConfigError, match="fp16 runs on a CUDA device"):
        TorchRunner(
            "se_resnet18",
            precision="fp16",
            model_options={"num_classes": 3, "img_size": 32},
            random_weights=True,
        )
    with pytest.raises(ConfigError, match="cuda_graph=True needs a CUDA device"):
        TorchRunner(
            "se_resnet18",
            cuda_graph=True,
            model_options={"num_classes": 3, "img_size": 32},
            random_weights=True,
        )
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        TorchRunner("se_resnet18", precision="int4", random_weights=True)


def test_bf16_on_cpu_is_close_to_fp32() -> None:
    options = {"num_classes": 5, "img_size": 32}
    batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    torch.manual_seed(0)
    with TorchRunner("se_resnet18", model_options=options, random_weights=True) as fp32:
        reference = fp32(batch)
        state = fp32._model.state_dict()  # type: ignore[union-attr]
    torch.manual_seed(0)
    with TorchRunner("se_resnet18", model_options=options, precision="bf16", random_weights=True) as bf16:
        bf16._model.load_state_dict(state)  # type: ignore[union-attr]
        output = bf16(batch)
        assert "bf16" in bf16.provider and bf16.precision == "bf16"
        assert bf16.time_compute is None  # bench times GPU-only only where there is a GPU
        assert output.dtype == np.float32
        streamed = list(bf16.stream([batch, batch[:1]]))
    cosine = (output * reference).sum(1) / np.linalg.norm(output, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.99
    np.testing.assert_allclose(streamed[0], output, rtol=1e-3, atol=1e-3)
    assert streamed[1].shape == (1, 5)
