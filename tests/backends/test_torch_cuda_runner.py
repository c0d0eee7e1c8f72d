"""The PyTorch runner's CUDA path on CPU: the real executor (slots, side-stream copies, double buffering, CUDA
graphs per batch size and slot, time_compute, the model's lifetime) with only ``torch.cuda`` replaced by a
recording fake; and the CPU-side options."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
from cuda_fakes import FakeTorchOps

from sedeploy.backends.base import RunnerClosedError
from sedeploy.backends.cuda_memory import graphs
from sedeploy.backends.torch import CudaExecutor, TorchRunner
from sedeploy.errors import ConfigError

CLASSES = 4
SHAPE = (8, 2, 3, 3)


def _executor(ops: FakeTorchOps, **options: Any) -> tuple[CudaExecutor, list[tuple[str, int]]]:
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
    monkeypatch.setattr(graphs, "_warned", set())


def test_copy_on_the_side_stream_then_compute_waits_for_it() -> None:
    ops = FakeTorchOps()
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
    ops = FakeTorchOps()
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


def test_one_graph_per_batch_size_recorded_after_a_direct_run_and_kept() -> None:
    ops = FakeTorchOps()
    executor, _ = _executor(ops, slots=1, cuda_graph=True)
    for rows in (4, 4, 4, 6, 6, 4):
        batch = _batch(rows, rows)
        np.testing.assert_allclose(executor.run(batch), _expected(batch), rtol=1e-5, atol=1e-5)
    graph = executor.slots[0].graph
    assert graph.captures == 2 and graph.sizes == [4, 6]  # the 4-row graph outlives the 6-row runs
    assert graph.replays == 4 and [entry[0] for entry in ops.log].count("replay") == 4
    pools = {entry[2] for entry in ops.log if entry[0] == "capture"}
    assert len(pools) == 1, "the graphs of one slot share one memory pool"


def test_a_split_batch_does_not_recapture_on_every_call() -> None:
    ops = FakeTorchOps()
    executor, _ = _executor(ops, slots=2, cuda_graph=True)
    batch = _batch(20, 3)  # pieces of 8, 8 and 4 at max batch 8
    for _ in range(4):
        (output,) = list(executor.stream([batch]))
        np.testing.assert_allclose(output, _expected(batch), rtol=1e-5, atol=1e-5)
    captures = sum(slot.graph.captures for slot in executor.slots)
    assert captures <= 4, f"{captures} captures for two sizes on two slots: graphs were re-recorded"
    assert sum(slot.graph.replays for slot in executor.slots) >= 8


def test_failed_capture_warns_once_and_runs_directly(caplog: pytest.LogCaptureFixture) -> None:
    ops = FakeTorchOps(capture_works=False)
    executor, calls = _executor(ops, slots=1, cuda_graph=True)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            batch = _batch(2)
            np.testing.assert_allclose(executor.run(batch), _expected(batch), rtol=1e-5, atol=1e-5)
    assert len(calls) == 3 and [entry[0] for entry in ops.log].count("capture") == 1
    assert sum("cannot be captured" in record.message for record in caplog.records) == 1


def test_time_compute_times_the_model_alone_with_events() -> None:
    ops = FakeTorchOps()
    executor, calls = _executor(ops)
    seconds = executor.time_compute(20, iterations=2, warmup=1)
    assert seconds == [0.006, 0.006]  # pieces of 8, 8, 4 at 2 ms each
    assert [rows for _, rows in calls] == [8, 8, 4] * 3


def test_close_while_streaming_defers_the_free_and_refuses_new_calls() -> None:
    ops = FakeTorchOps(capture_works=True)
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


def test_close_mid_stream_keeps_the_model_until_the_last_slot_is_back() -> None:
    options = {"num_classes": 5, "img_size": 32}
    runner = TorchRunner("se_resnet18", model_options=options, random_weights=True, max_batch=4)
    ops = FakeTorchOps()
    runner._attach_executor(ops, slots=2, cuda_graph=True)
    feeds = [
        np.random.default_rng(seed).standard_normal((4, 3, 32, 32)).astype(np.float32) for seed in range(5)
    ]
    outputs = runner.stream(iter(feeds))
    next(outputs)
    runner.close()  # another caller's graph may still replay: the weights it reads must stay
    assert runner.closed and runner._model is not None, "the model was freed while a slot was still out"
    with pytest.raises(RunnerClosedError):
        runner(feeds[0])
    with pytest.raises(RunnerClosedError, match="closed while streaming"):
        list(outputs)
    assert runner._model is None, "the model outlived the last give-back"


def test_close_of_an_idle_runner_frees_the_model_at_once() -> None:
    runner = TorchRunner("se_resnet18", model_options={"num_classes": 3, "img_size": 32}, random_weights=True)
    runner._attach_executor(FakeTorchOps(), slots=2, cuda_graph=False)
    runner.close()
    assert runner._model is None


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
