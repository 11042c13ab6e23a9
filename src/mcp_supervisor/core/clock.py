"""Time for the supervision core: a monotonic ``now()`` and timers, injectable for deterministic tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The supervision engine's only source of time.

    ``now()`` is monotonic seconds. ``call_later(delay, fn)`` runs ``fn()`` once, on the event loop, after
    ``delay`` seconds of this clock's time, unless cancelled. Intensity windows, restart delays, start timeouts and
    shutdown timeouts all use it, so a test can drive them with :class:`ManualClock` without sleeping.
    """

    def now(self) -> float: ...

    def call_later(self, delay: float, fn: Callable[[], object]) -> Timer: ...


class _LoopTimer:
    __slots__ = ("cancelled", "clock", "fn")

    def __init__(self, clock: LoopClock, fn: Callable[[], object]) -> None:
        self.clock = clock
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.clock.note_cancelled()


class LoopClock:
    """The running event loop's monotonic clock.

    Timers live in one heap of plain tuples served by a single loop timer. Every start arms a start-timeout timer
    that is almost always cancelled; asyncio's own ``TimerHandle`` heap compares entries in Python and made that
    the largest cost of a restart.
    """

    __slots__ = ("_at", "_cancelled", "_handle", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _LoopTimer]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0
        self._cancelled = 0

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def note_cancelled(self) -> None:
        """A timer of this clock was cancelled: its heap entry is garbage until swept."""
        self._cancelled += 1

    def call_later(self, delay: float, fn: Callable[[], object]) -> Timer:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = _LoopTimer(self, fn)
        heap = self._heap
        heapq.heappush(heap, (when, next(self._seq), timer))
        if self._handle is None or when < self._at:
            self._arm(loop, when)
        elif self._cancelled > 512 and self._cancelled * 2 > len(heap):
            self._heap = [e for e in heap if not e[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
        return timer

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_at(when, self._fire, loop)
        self._at = when

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        heap = self._heap
        now = loop.time()
        while heap and (heap[0][0] <= now or heap[0][2].cancelled):
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer.cancelled = True
            try:
                timer.fn()
            except Exception as e:  # noqa: BLE001 - report like the loop does, keep serving other timers
                loop.call_exception_handler({"message": "clock timer callback failed", "exception": e})
        if heap:
            self._arm(loop, heap[0][0])


class _ManualTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told: ``advance(seconds)`` fires due timers in deadline order."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _ManualTimer, Callable[[], object]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, fn: Callable[[], object]) -> Timer:
        timer = _ManualTimer()
        heapq.heappush(self._heap, (self._now + max(0.0, delay), next(self._seq), timer, fn))
        return timer

    @property
    def pending(self) -> int:
        return sum(1 for _, _, t, _ in self._heap if not t.cancelled)

    def advance(self, seconds: float) -> None:
        target = self._now + seconds
        while self._heap and self._heap[0][0] <= target:
            deadline, _, timer, fn = heapq.heappop(self._heap)
            self._now = max(self._now, deadline)
            if not timer.cancelled:
                fn()
        self._now = target


async def wait_done(clock: Clock | None, fut: asyncio.Future[Any], timeout: float | None) -> bool:
    """The core's one way to wait: until ``fut`` is done or ``timeout`` seconds of ``clock`` pass (``clock=None``:
    the loop's real time); never cancels ``fut``.

    Returns True when ``fut`` is done. ``timeout=None`` waits forever; ``0`` only yields once.
    """
    if fut.done():
        return True
    if timeout is None:
        await asyncio.wait((fut,))
        return True
    if timeout <= 0:
        await asyncio.sleep(0)
        return fut.done()
    if clock is None:
        await asyncio.wait((fut,), timeout=timeout)
        return fut.done()
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = clock.call_later(timeout, wake)
    fut.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        fut.remove_done_callback(wake)
    return fut.done()


SWEEP_RESOLUTION = 0.01  # sweeper-enforced timeouts fire at most this late


class Expiring(Protocol):
    def expire(self, now: float) -> bool:
        """Act on whatever is overdue at ``now``; True when nothing is left to watch."""
        ...


class Sweeper:
    """One timer per event loop that serves many timeouts.

    A timer per operation (``call_later`` + ``cancel``, or ``asyncio.timeout``) costs as much as a whole call
    round trip or a pooled query; instead, things with deadlines register here, and a single timer, armed
    only while something is registered, checks them every ``SWEEP_RESOLUTION`` seconds.
    """

    __slots__ = ("active", "armed", "loop")
    _by_loop: dict[asyncio.AbstractEventLoop, Sweeper] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.active: dict[Expiring, None] = {}
        self.armed = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Sweeper:
        sweeper = cls._by_loop.get(loop)
        if sweeper is None:
            if len(cls._by_loop) > 8:  # forget closed loops (tests and benchmarks create many)
                for old in [lp for lp in cls._by_loop if lp.is_closed()]:
                    del cls._by_loop[old]
            sweeper = cls._by_loop[loop] = cls(loop)
        return sweeper

    def watch(self, item: Expiring) -> None:
        self.active[item] = None
        if not self.armed:
            self.armed = True
            self.loop.call_later(SWEEP_RESOLUTION, self.sweep)

    def unwatch(self, item: Expiring) -> None:
        self.active.pop(item, None)

    def sweep(self) -> None:
        now = self.loop.time()
        for item in list(self.active):
            if item.expire(now):
                self.active.pop(item, None)
        if self.active:
            self.loop.call_later(SWEEP_RESOLUTION, self.sweep)
        else:
            self.armed = False


class Deadline:
    """``asyncio.timeout`` for the current task, served by the loop's :class:`Sweeper`, re-armable.

    On expiry the task is cancelled; the code that catches the ``CancelledError`` asks :meth:`expired_here`,
    which absorbs the cancellation (``Task.uncancel``) only when this deadline caused it and nothing else is
    cancelling the task.
    """

    __slots__ = ("_fired", "_sweeper", "_task", "when")

    def __init__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline needs a running task")
        self._task = task
        self._sweeper = Sweeper.of(task.get_loop())
        self._fired = False
        self.when = 0.0

    def arm(self, seconds: float) -> None:
        self._fired = False
        self.when = self._sweeper.loop.time() + seconds
        self._sweeper.watch(self)

    def expire(self, now: float) -> bool:
        if now < self.when:
            return False
        self._fired = True
        self._task.cancel()
        return True

    def disarm(self) -> None:
        self._sweeper.unwatch(self)

    def expired_here(self) -> bool:
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() == 0


def all_done(futs: list[asyncio.Future[Any]]) -> asyncio.Future[None]:
    """A future done once every one of ``futs`` is done (never cancels them, unlike gather)."""
    loop = asyncio.get_running_loop()
    out: asyncio.Future[None] = loop.create_future()
    left = [len(futs)]

    def one(_: object) -> None:
        left[0] -= 1
        if left[0] == 0 and not out.done():
            out.set_result(None)

    if not futs:
        out.set_result(None)
    for f in futs:
        f.add_done_callback(one)
    return out
