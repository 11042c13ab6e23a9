"""Typed events for every transition, and the bus that delivers them.

The core never logs: it emits these, and telemetry subscribes (suture's ``events.go``). Each subscriber owns a
bounded queue; when it is full new events are dropped for that subscriber and counted, so a slow subscriber can
never block the tree.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

ExitKind: TypeAlias = Literal["normal", "shutdown", "abnormal"]


@dataclass(frozen=True, slots=True)
class ExitReason:
    """How a child ended: ``normal`` (returned / exit 0), ``shutdown`` (stopped on purpose), or ``abnormal``; for
    an OS process also its exit code or the signal (by name) that ended it and whether it dumped core, and
    ``ended_by`` when the daemon ended it itself (``max_memory``, ``liveness``)."""

    kind: ExitKind
    detail: str = ""
    code: int | None = None
    signal: str | None = None
    core_dumped: bool = False
    ended_by: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


NORMAL = ExitReason("normal")
SHUTDOWN = ExitReason("shutdown")


def _now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    path: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildStarted(Event):
    kind: str
    pid: int | None = None
    restarts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildExited(Event):
    kind: str
    reason: ExitReason
    pid: int | None = None
    uptime_s: float = 0.0
    cause: str = ""  # core.forensics.Cause


@dataclass(frozen=True, slots=True, kw_only=True)
class CrashLoopStarted(Event):
    """The child ended ``count`` times with the same cause and a similar last line within its intensity period."""

    cause: str
    count: int
    since: float  # wall clock
    line: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CrashLoopEnded(Event):
    """An incarnation of a crash-looping child stayed up; ``count`` failures made the episode."""

    cause: str
    count: int
    since: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SingletonStarted(Event):
    """Fleet mode: this node took a singleton's lease and started it (``token``: its fencing token)."""

    node: str
    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SingletonUnheld(Event):
    """Fleet mode: no live node has held the singleton for longer than the failover bound (``seconds`` so far), as
    this node saw it — told by one node of the fleet (the first live one by name), once per episode."""

    seconds: float
    bound: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SingletonOverlap(Event):
    """Fleet mode: more than one live node says it holds the singleton (``nodes``) — told once per episode."""

    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SingletonKilled(Event):
    """Fleet mode's backstop: a singleton's OS process still ran when its lease's hard deadline came (its stop did
    not finish in time) and was SIGKILLed with its group, before the lease could expire anywhere."""

    pid: int
    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StartFailed(Event):
    reason: ExitReason
    cause: str = ""  # core.forensics.Cause: start-failure, or what killed it while it started


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartScheduled(Event):
    delay_s: float
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IntensityExceeded(Event):
    intensity: int
    period: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorStopped(Event):
    reason: ExitReason


@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownTimeout(Event):
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildUnstopped(Event):
    """An in-process child did not finish its cleanup within its shutdown time; it was not (cannot be) killed."""

    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessOutput(Event):
    stream: Literal["stdout", "stderr"]
    line: str
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EscapeeKilled(Event):
    """A process that had left its OS child's process group (``setsid``) was killed with that child."""

    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpecWarning(Event):
    message: str


class Subscription:
    """A bounded queue of events for one subscriber. Iterate it, or call :meth:`get`."""

    __slots__ = ("_q", "_maxlen", "_waiter", "dropped", "_bus", "closed")

    def __init__(self, bus: EventBus, maxlen: int) -> None:
        self._q: deque[Event] = deque()
        self._maxlen = maxlen
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self._bus = bus
        self.closed = False

    def push(self, event: Event) -> None:
        """Called by the bus: queue ``event``, or count it dropped when the queue is full."""
        if len(self._q) >= self._maxlen:
            self.dropped += 1
            return
        self._q.append(event)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __len__(self) -> int:
        return len(self._q)

    def get_nowait(self) -> Event | None:
        return self._q.popleft() if self._q else None

    async def get(self) -> Event:
        while not self._q:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._q.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    def close(self) -> None:
        self.closed = True
        self._bus.unsubscribe(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class BusStatistics:
    subscribers: int
    queued: int  # events waiting in subscribers' queues
    dropped: int  # events dropped because a subscriber's queue was full, since it subscribed


class EventBus:
    """Fans events out to subscribers without ever waiting on them."""

    __slots__ = ("_subs",)

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def statistics(self) -> BusStatistics:
        subs = list(self._subs)
        return BusStatistics(len(subs), sum(len(s) for s in subs), sum(s.dropped for s in subs))

    @property
    def active(self) -> bool:
        """True when someone listens: emitters skip building events otherwise."""
        return bool(self._subs)

    def subscribe(self, maxlen: int = 10_000) -> Subscription:
        if maxlen < 1:
            raise ValueError(f"maxlen: must be >= 1, got {maxlen!r}")
        sub = Subscription(self, maxlen)
        self._subs.add(sub)
        return sub

    def emit(self, event: Event) -> None:
        for sub in self._subs:
            sub.push(event)
