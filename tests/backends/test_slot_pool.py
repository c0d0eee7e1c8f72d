"""The execution-slot pool (no lost wake-ups, no silent hangs, close wakes waiters, the right holder charged) and
the graph bookkeeping of a slot (one graph per size for PyTorch; one graph, captured after a repeat, for TensorRT)."""

from __future__ import annotations

import threading
import time

import pytest

from sedeploy.backends.base import RunnerClosedError
from sedeploy.backends.cuda_memory import GraphSlot, PoolDeadlockError, SlotPool


def _pool(*slots: str) -> SlotPool[str]:
    return SlotPool(slots, lambda: RunnerClosedError("closed; load the model again"))


def test_acquire_without_waiting_returns_none_when_empty() -> None:
    pool = _pool("a")
    assert pool.acquire(wait=False) == "a"
    assert pool.acquire(wait=False) is None
    assert pool.out == 1
    pool.release("a")
    assert pool.acquire(wait=False) == "a"


def test_no_wait_never_blocks_under_contention() -> None:
    pool = _pool("a", "b")
    taken: list[str | None] = []
    lock = threading.Lock()

    def grab() -> None:
        for _ in range(200):
            slot = pool.acquire(wait=False)
            with lock:
                taken.append(slot)
            if slot is not None:
                pool.release(slot)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads), "acquire(wait=False) blocked"
    assert pool.out == 0 and len(taken) == 800


def test_same_thread_waiting_for_its_own_slots_raises_instead_of_hanging() -> None:
    pool = _pool("a", "b")
    pool.acquire()
    pool.acquire()
    with pytest.raises(PoolDeadlockError, match="stream\\(\\) loop") as caught:
        pool.acquire()
    assert "\n" not in str(caught.value)


def test_waiting_for_another_threads_slot_waits_and_gets_it() -> None:
    pool = _pool("a")
    pool.acquire()
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive() and not got
    pool.release("a")
    waiter.join(timeout=5)
    assert got == ["a"]


def test_two_threads_each_holding_one_and_waiting_do_not_both_hang() -> None:
    pool = _pool("a", "b")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def work() -> None:
        slot = pool.acquire()
        barrier.wait()
        try:
            pool.acquire()
            outcomes.append("second")
        except PoolDeadlockError:
            outcomes.append("deadlock")
        finally:
            assert slot is not None
            pool.release(slot)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert "deadlock" in outcomes


def test_close_wakes_waiters_with_the_closed_error_and_reports_the_last_release() -> None:
    pool = _pool("a")
    pool.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire()
        except BaseException as error:
            errors.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    assert pool.close() is False  # a slot is out: the owner frees later
    waiter.join(timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], RunnerClosedError)
    assert pool.release("a") is True  # the last slot back after close: free now
    with pytest.raises(RunnerClosedError):
        pool.acquire(wait=False)


def test_release_from_another_thread_charges_the_thread_that_took_the_slot() -> None:
    pool = _pool("a", "b")
    took: dict[str, str] = {}
    taken = threading.Barrier(3)
    released = threading.Event()
    counts: dict[str, int] = {}

    def hold(name: str) -> None:
        slot = pool.acquire()
        assert slot is not None
        took[name] = slot
        taken.wait()
        released.wait(5)
        counts[name] = pool.held_by_current_thread()

    threads = {name: threading.Thread(target=hold, args=(name,)) for name in ("first", "second")}
    for name in ("first", "second"):
        threads[name].start()
        time.sleep(0.02)  # "first" takes its slot first, so it is the holder a wrong guess would charge
    taken.wait(5)
    assert pool.held_by_current_thread() == 0
    pool.release(took["second"])  # a generator of "second"'s finished on this thread
    released.set()
    for thread in threads.values():
        thread.join(5)
    assert counts == {"first": 1, "second": 0}
    with pytest.raises(ValueError, match="not out of this pool"):
        pool.release(took["second"])


def test_close_of_an_idle_pool_says_free_now() -> None:
    assert _pool("a").close() is True


class _Graph:
    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.freed = False

    def free(self) -> None:
        self.freed = True


def _run(slot: GraphSlot[_Graph], sizes: list[int]) -> list[int]:
    """Run ``sizes`` through ``slot`` as an executor does; the sizes captured, in order."""
    captured = []
    for rows in sizes:
        if slot.replayable(rows):
            slot.replays += 1
        if slot.after_run(rows):
            slot.record(rows, lambda rows=rows: _Graph(rows))
            captured.append(rows)
    return captured


def test_per_size_slot_keeps_one_graph_per_size() -> None:
    slot: GraphSlot[_Graph] = GraphSlot(per_size=True)
    assert _run(slot, [32, 8, 32, 8, 32, 8, 5]) == [32, 8, 5]
    assert slot.sizes == [5, 8, 32] and slot.replays == 4
    kept = [slot.launchable(rows) for rows in slot.sizes]
    slot.free()
    assert all(graph is not None and graph.freed for graph in kept) and slot.sizes == []


def test_single_graph_slot_captures_only_after_a_size_repeats() -> None:
    slot: GraphSlot[_Graph] = GraphSlot()
    assert _run(slot, [32, 8, 32, 8, 32, 8]) == [], "alternating sizes must never capture"
    first = slot.launchable(4)
    assert _run(slot, [4, 4, 4]) == [4] and slot.sizes == [4] and first is None
    four = slot.launchable(4)
    assert _run(slot, [6, 4, 6, 6]) == [6]
    assert four is not None and four.freed, "the old graph is freed when another size is captured"
    assert slot.sizes == [6] and slot.captures == 2 and slot.replays == 2


def test_graph_slot_remembers_a_failed_capture_for_that_size() -> None:
    for per_size in (True, False):
        slot: GraphSlot[_Graph] = GraphSlot(per_size=per_size)
        attempts: list[int] = []

        for _ in range(4):
            if slot.after_run(4):
                slot.record(4, lambda attempts=attempts: attempts.append(1))
        assert not slot.replayable(4) and attempts == [1] and slot.captures == 0
