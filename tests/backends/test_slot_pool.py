"""The execution-slot pool (no lost wake-ups, no silent hangs, close wakes waiters) and one-graph-per-slot bookkeeping."""

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


def test_close_of_an_idle_pool_says_free_now() -> None:
    assert _pool("a").close() is True


class _Graph:
    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.freed = False

    def free(self) -> None:
        self.freed = True


def test_graph_slot_records_once_per_size_and_rerecords_on_change() -> None:
    slot: GraphSlot[_Graph] = GraphSlot()
    assert slot.needs_record(4) and not slot.replayable(4)
    first = slot.record(4, lambda: _Graph(4))
    assert slot.replayable(4) and not slot.needs_record(4)
    assert not slot.replayable(8) and slot.needs_record(8)
    second = slot.record(8, lambda: _Graph(8))
    assert first is not None and first.freed, "the graph for the old size must be freed, not kept stale"
    assert second is not None and slot.replayable(8) and not slot.replayable(4)
    assert slot.captures == 2
    slot.free()
    assert second.freed and slot.graph is None


def test_graph_slot_remembers_a_failed_capture_for_that_size() -> None:
    slot: GraphSlot[_Graph] = GraphSlot()
    attempts: list[int] = []

    def capture() -> _Graph | None:
        attempts.append(1)
        return None

    slot.record(4, capture)
    assert not slot.replayable(4) and not slot.needs_record(4)
    assert attempts == [1] and slot.captures == 0
