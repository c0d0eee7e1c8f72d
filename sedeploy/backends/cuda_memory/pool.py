"""Execution slots shared by threads (:class:`SlotPool`) and the two-slot pipeline (:func:`pipeline`): plain Python."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from sedeploy.errors import SedeployError

Item = TypeVar("Item")
Slot = TypeVar("Slot")
Pending = TypeVar("Pending")
Result = TypeVar("Result")


class PoolDeadlockError(SedeployError):
    """Waiting for an execution slot would block forever: every slot is held by threads that are waiting too."""


def pipeline(
    items: Iterable[Item],
    slots: Sequence[Slot],
    submit: Callable[[Slot, Item], Pending],
    collect: Callable[[Slot, Pending], Result],
) -> Iterator[Result]:
    """Run ``items`` through ``slots`` round-robin, keeping up to ``len(slots)`` in flight; yield in order.

    ``submit`` enqueues one item's work on a slot without waiting; ``collect``
    waits for that slot's work and returns its result. With two slots (two streams,
    two buffer sets) the copies of item i+1 overlap the compute of item i. A slot is
    always collected before it is submitted to again.
    """
    if not slots:
        raise ValueError("pipeline needs at least one slot")
    in_flight: deque[tuple[Slot, Pending]] = deque()
    next_slot = 0
    for item in items:
        if len(in_flight) == len(slots):
            slot, pending = in_flight.popleft()
            yield collect(slot, pending)
        slot = slots[next_slot]
        next_slot = (next_slot + 1) % len(slots)
        in_flight.append((slot, submit(slot, item)))
    while in_flight:
        slot, pending = in_flight.popleft()
        yield collect(slot, pending)


class SlotPool(Generic[Slot]):
    """A fixed set of execution slots shared by threads: take one, use it, give it back.

    Unlike a bare queue it knows which thread holds which slot, so a wait that can
    never end (every slot held by threads that are themselves waiting, e.g. a caller
    that runs the model inside its own ``stream()`` loop) raises
    :class:`PoolDeadlockError` instead of hanging, and :meth:`close` wakes every
    waiter. A slot given back by another thread than took it (a generator finished
    elsewhere) is taken off its taker's count. ``closed_error`` makes the error a
    closed pool raises.
    """

    def __init__(self, slots: Iterable[Slot], closed_error: Callable[[], Exception]) -> None:
        self._free: deque[Slot] = deque(slots)
        self.size = len(self._free)
        if not self.size:
            raise ValueError("a slot pool needs at least one slot")
        self._closed_error = closed_error
        self._condition = threading.Condition()
        self._held: dict[int, int] = {}
        """Slots out per thread ident."""
        self._taker: dict[int, int] = {}
        """The thread ident that took each slot out, by ``id(slot)`` (slots need not be hashable)."""
        self._waiting: set[int] = set()
        self._closed = False

    @property
    def out(self) -> int:
        """Slots currently taken."""
        with self._condition:
            return self.size - len(self._free)

    def held_by_current_thread(self) -> int:
        with self._condition:
            return self._held.get(threading.get_ident(), 0)

    def acquire(self, wait: bool = True) -> Slot | None:
        """A free slot; waits for one unless ``wait`` is off (then None when none is free)."""
        me = threading.get_ident()
        with self._condition:
            while True:
                if self._closed:
                    raise self._closed_error()
                if self._free:
                    slot = self._free.popleft()
                    self._held[me] = self._held.get(me, 0) + 1
                    self._taker[id(slot)] = me
                    return slot
                if not wait:
                    return None
                if self._would_deadlock(me):
                    raise PoolDeadlockError(
                        f"all {self.size} execution slot(s) are held by threads waiting for one (this thread holds "
                        f"{self._held.get(me, 0)}); do not call the runner inside its own stream() loop on one "
                        "thread, or load it with more contexts"
                    )
                self._waiting.add(me)
                try:
                    self._condition.wait()
                finally:
                    self._waiting.discard(me)

    def _would_deadlock(self, me: int) -> bool:
        holders = [thread for thread, count in self._held.items() if count > 0]
        return bool(holders) and all(thread == me or thread in self._waiting for thread in holders)

    def release(self, slot: Slot) -> bool:
        """Give ``slot`` back (from any thread); True when the pool is closed and this was the last slot out."""
        with self._condition:
            taker = self._taker.pop(id(slot), None)
            if taker is None:
                raise ValueError("this slot is not out of this pool; give back only what acquire() returned")
            count = self._held.get(taker, 0)
            if count <= 1:
                self._held.pop(taker, None)
            else:
                self._held[taker] = count - 1
            self._free.append(slot)
            self._condition.notify_all()
            return self._closed and len(self._free) == self.size

    def close(self) -> bool:
        """Refuse new takers and wake waiters; True when no slot is out (the caller may free everything now)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            return len(self._free) == self.size
