"""TensorRTRunner on a fake GPU: the real runner, cuda_memory and cuda-python implementation over a fake driver
and a fake TensorRT engine (neither a GPU nor TensorRT can exist here).

What these pin down: splitting and padding, double-buffered streaming, that nothing
is freed or reused before the work queued on it is synchronised (break-then-close,
close from another thread, a bad batch mid-stream), the hang guard, one CUDA graph
per slot captured only after a batch size repeats, checked tensor addresses and output
shapes, per-context optimization profiles, the DLA refusal, and a failed load that
releases every TensorRT object before the CUDA context.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from cuda_fakes import (
    IMAGE,
    FakeDriver,
    FakeEngine,
    FakeTensorRT,
    fake_logits,
    install_cuda_python,
    write_fake_engine,
)

from sedeploy.backends import cuda_memory
from sedeploy.backends.base import RunnerClosedError
from sedeploy.backends.cuda_memory import graphs
from sedeploy.backends.tensorrt import EngineMismatchError, EngineRunError, TensorRTRunner


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> FakeDriver:
    monkeypatch.setattr(graphs, "_warned", set())
    return install_cuda_python(monkeypatch)


def _runner(
    monkeypatch: pytest.MonkeyPatch,
    driver: FakeDriver,
    folder: Path,
    *,
    profiles: int = 1,
    dla_cores: int = 0,
    engine_fields: dict[str, object] | None = None,
    **options: object,
) -> tuple[TensorRTRunner, FakeEngine]:
    engine = FakeEngine(driver, profiles=profiles)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(engine, dla_cores=dla_cores))
    path = write_fake_engine(folder, **(engine_fields or {}))
    return TensorRTRunner(path, **options), engine  # type: ignore[arg-type]


def _batch(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, *IMAGE)).astype(np.float32)


def test_runs_splits_and_pads(gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner, _ = _runner(monkeypatch, gpu, tmp_path)
    with runner:
        assert runner.provider.endswith("NVIDIA Fake GPU") and runner.max_batch == 8
        for rows in (1, 5, 8, 19):
            batch = _batch(rows, rows)
            np.testing.assert_allclose(runner(batch), fake_logits(batch), rtol=1e-5)
    assert gpu.retained == 0 and gpu.cuCtxGetCurrent()[1] == 0


def test_stream_equals_per_batch(gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner, _ = _runner(monkeypatch, gpu, tmp_path)
    batches = [_batch(rows, rows) for rows in (3, 8, 1, 13, 0, 6)]
    with runner:
        streamed = list(runner.stream(batches))
    assert [len(output) for output in streamed] == [3, 8, 1, 13, 0, 6]
    for batch, output in zip(batches, streamed, strict=True):
        np.testing.assert_allclose(output, fake_logits(batch), rtol=1e-5)


def _frees_after_last_sync(driver: FakeDriver) -> bool:
    """Every stream is synchronised after the last work queued on it and before the first device/pinned free."""
    log = driver.log
    first_free = min(index for index, (name, _) in enumerate(log) if name in ("cuMemFree", "cuMemFreeHost"))
    for stream in [args[0] for name, args in log if name == "cuStreamCreate"]:
        queued = [
            index
            for index, (name, args) in enumerate(log)
            if name in ("cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync", "cuGraphLaunch") and stream in args
        ]
        last = max(queued, default=-1)
        if not any(
            name == "cuStreamSynchronize" and args[0] is stream for name, args in log[last + 1 : first_free]
        ):
            return False
    return True


def test_break_then_close_waits_for_in_flight_work(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, _ = _runner(monkeypatch, gpu, tmp_path)
    outputs = runner.stream([_batch(4, seed) for seed in range(5)])
    next(outputs)  # the second batch is already enqueued on the other slot
    runner.close()
    assert "cuMemFree" not in gpu.names(), "buffers were freed while a stream still held them"
    outputs.close()  # what leaving a for loop does to the generator
    assert _frees_after_last_sync(gpu)
    assert gpu.names().count("cuMemFree") == 4 and gpu.retained == 0


def test_close_from_another_thread_mid_stream(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, _ = _runner(monkeypatch, gpu, tmp_path)
    outputs = runner.stream(_batch(2, seed) for seed in range(10))
    next(outputs)
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join(timeout=5)
    with pytest.raises(RunnerClosedError, match="closed while streaming"):
        list(outputs)
    assert _frees_after_last_sync(gpu) and gpu.retained == 0


def test_bad_batch_mid_stream_frees_nothing_in_flight(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, _ = _runner(monkeypatch, gpu, tmp_path)
    with runner:
        batches = [_batch(3), _batch(3), np.zeros((2, 5), np.float32)]
        with pytest.raises(Exception, match="expects"):
            list(runner.stream(batches))
        assert runner._pool is not None and runner._pool.out == 0
        np.testing.assert_allclose(runner(_batch(2)), fake_logits(_batch(2)), rtol=1e-5)  # still usable
    assert _frees_after_last_sync(gpu)


def test_calling_the_runner_inside_its_own_stream_raises_instead_of_hanging(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, _ = _runner(monkeypatch, gpu, tmp_path, contexts=2)
    with runner:
        for _ in runner.stream([_batch(1), _batch(1)]):
            with pytest.raises(cuda_memory.PoolDeadlockError):
                runner(_batch(1))
            with pytest.raises(cuda_memory.PoolDeadlockError):
                runner.time_compute(1, 1)
            break


def test_cuda_graph_captured_once_a_size_repeats_and_kept_through_other_sizes(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, engine = _runner(monkeypatch, gpu, tmp_path, contexts=1, cuda_graph=True)
    with runner:
        slot = runner._slots[0]
        for rows in (4, 4, 4, 6, 4, 6, 6, 4):
            batch = _batch(rows, rows)
            np.testing.assert_allclose(runner(batch), fake_logits(batch), rtol=1e-5)
        assert slot.graph.captures == 2 and slot.graph.sizes == [6]  # 4 after its repeat, then 6 after its
        assert slot.graph.replays == 2  # the third 4 and the 4 between the 6s
    executes = [mode for _, _, mode in (entry for entry in engine.log if entry[0] == "execute")]
    assert executes == ["run", "run", "capturing", "run", "run", "run", "capturing", "run"]
    assert gpu.names().count("cuGraphExecDestroy") == 2


def test_a_split_call_never_recaptures(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, _ = _runner(monkeypatch, gpu, tmp_path, contexts=1, cuda_graph=True)
    with runner:
        batch = _batch(19, 3)  # pieces of 8, 8 and 3 at MAX 8
        for _ in range(4):
            np.testing.assert_allclose(runner(batch), fake_logits(batch), rtol=1e-5)
        slot = runner._slots[0]
        assert slot.graph.captures == 1 and slot.graph.sizes == [8] and slot.graph.replays == 6


def test_cuda_graph_impossible_says_so_at_warning(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gpu.fail.add("capture")
    runner, _ = _runner(monkeypatch, gpu, tmp_path, contexts=1, cuda_graph=True)
    with runner, caplog.at_level(logging.WARNING):
        for _ in range(3):
            batch = _batch(2)
            np.testing.assert_allclose(runner(batch), fake_logits(batch), rtol=1e-5)
        assert runner._slots[0].graph.captures == 0
    assert any("running without CUDA graphs" in record.message for record in caplog.records)


def test_refused_tensor_address_is_an_error(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, engine = _runner(monkeypatch, gpu, tmp_path)
    engine.refuse_address = True
    with runner, pytest.raises(EngineRunError, match="refused the device address"):
        runner(_batch(2))


def test_unexpected_output_shape_is_refused_before_running(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, engine = _runner(monkeypatch, gpu, tmp_path)
    engine.wrong_output = 1
    with runner, pytest.raises(EngineRunError, match="rebuild"):
        runner(_batch(2))
    assert not [entry for entry in engine.log if entry[0] == "execute"]


def test_each_context_gets_its_own_profile_where_the_engine_has_them(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, engine = _runner(monkeypatch, gpu, tmp_path, profiles=2, contexts=2)
    with runner:
        assert [slot.profile for slot in runner._slots] == [0, 1]
        assert ("set_profile", 1) in engine.log


def test_contexts_teardown_order(gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner, engine = _runner(monkeypatch, gpu, tmp_path)
    runner(_batch(3))
    gpu.log.clear()
    engine.contexts.clear()
    runner.close()
    names = gpu.names()
    assert names.index("cuStreamSynchronize") < names.index("cuMemFree")
    assert names[-1] == "cuDevicePrimaryCtxRelease"


def test_a_failed_load_lets_tensorrt_objects_go_before_the_context(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gpu.fail.add("cuMemAlloc")  # the buffers fail after the first execution context exists
    with pytest.raises(cuda_memory.CudaError, match="cannot allocate") as caught:
        _runner(monkeypatch, gpu, tmp_path)
    names = gpu.names()
    assert "destroy_context" in names, "an execution context outlived the failed load (held by its traceback)"
    assert names.index("destroy_context") < names.index("cuDevicePrimaryCtxRelease")
    assert gpu.retained == 0 and caught.value.__traceback__ is not None


def test_dla_engine_refused_where_the_device_lacks_the_core(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(EngineMismatchError, match="DLA core 1") as caught:
        _runner(monkeypatch, gpu, tmp_path, dla_cores=1, engine_fields={"dla_core": 1, "gpu_fallback": True})
    assert "\n" not in str(caught.value)
    assert gpu.retained == 0


def test_dla_engine_runs_on_its_core(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, _ = _runner(monkeypatch, gpu, tmp_path, dla_cores=2, engine_fields={"dla_core": 1})
    with runner:
        runtime = sys.modules["tensorrt"].runtimes[-1]  # type: ignore[attr-defined]
        assert runtime.DLA_core == 1


def test_time_compute_uses_events_around_the_engine_alone(
    gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner, _engine = _runner(monkeypatch, gpu, tmp_path)
    with runner:
        gpu.log.clear()
        seconds = runner.time_compute(12, iterations=3, warmup=1)
    assert seconds == [0.003] * 3  # two chunks (8 + 4) of 1.5 ms each
    assert "cuMemcpyDtoHAsync" not in gpu.names()
