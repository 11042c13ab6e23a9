"""Bounded mailboxes with ``cast`` and ``call``, and a name registry.

A mailbox carries a closed set of messages: :class:`Cast` (fire and forget) and :class:`Call` (a request whose
sender waits for ``reply``). A worker receives them with ``await mailbox.receive()`` or ``async for`` and
dispatches with ``match``. When the owner exits, the mailbox closes: pending callers fail at once with
:class:`CalleeExited`, and a reply that arrives after the caller gave up is dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from .clock import Sweeper
from .errors import CalleeExited, CallTimeout, MailboxFull, NotRunning, OperationError

DEFAULT_CALL_TIMEOUT = 5.0
DEFAULT_CAPACITY = 1024


@dataclass(frozen=True, slots=True)
class Cast:
    payload: Any


class Call:
    """A request awaiting a reply. ``reply`` twice, or after the caller gave up, is a no-op."""

    __slots__ = ("payload", "_fut")

    def __init__(self, payload: Any, fut: asyncio.Future[Any]) -> None:
        self.payload = payload
        self._fut = fut

    def reply(self, value: Any = None) -> None:
        if not self._fut.done():
            self._fut.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self._fut.done():
            self._fut.set_exception(exc)

    @property
    def answered(self) -> bool:
        return self._fut.done()


Message: TypeAlias = Cast | Call


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    depth: int  # messages waiting
    capacity: int
    waiting_senders: int  # cast/call blocked on a full mailbox
    pending_calls: int  # calls awaiting a reply


class Mailbox:
    """A bounded FIFO of messages for one worker incarnation."""

    __slots__ = ("owner", "_q", "_capacity", "_getter", "_putters", "_pending", "_closed", "_close_reason")

    def __init__(self, owner: str, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity!r}")
        self.owner = owner
        self._q: deque[Message] = deque()
        self._capacity = capacity
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._pending: dict[asyncio.Future[Any], tuple[float, float]] = {}  # future -> (deadline, timeout)
        self._closed = False
        self._close_reason: object = ""

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(len(self._q), self._capacity, len(self._putters), len(self._pending))

    def _check_open(self) -> None:
        if self._closed:
            raise CalleeExited(f"{self.owner} has exited ({self._close_reason})")

    def _append(self, msg: Message) -> None:
        self._q.append(msg)
        g = self._getter
        if g is not None and not g.done():
            g.set_result(None)

    async def _put(self, msg: Message) -> None:
        while len(self._q) >= self._capacity:
            self._check_open()
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            finally:
                if fut in self._putters:
                    self._putters.remove(fut)
        self._check_open()
        self._append(msg)

    def cast_nowait(self, payload: Any) -> None:
        self._check_open()
        if len(self._q) >= self._capacity:
            raise MailboxFull(f"{self.owner}: mailbox full ({self._capacity} messages)")
        self._append(Cast(payload))

    async def cast(self, payload: Any) -> None:
        """Deliver ``payload``; waits for room while the mailbox is full (backpressure, never drops)."""
        self._check_open()
        if len(self._q) < self._capacity:
            self._append(Cast(payload))
        else:
            await self._put(Cast(payload))

    async def call(self, payload: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Send a request and wait for its reply, at most ``timeout`` seconds (None: forever)."""
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        msg = Call(payload, fut)
        if len(self._q) < self._capacity:
            self._append(msg)
        else:
            await self._put(msg)
        if timeout is not None:
            self._pending[fut] = (loop.time() + timeout, timeout)
            Sweeper.of(loop).watch(self)
        else:
            self._pending[fut] = (float("inf"), 0.0)
        try:
            return await fut
        finally:
            self._pending.pop(fut, None)

    def expire(self, now: float) -> bool:
        """Fail overdue calls; True when no call with a deadline is left."""
        left = False
        for fut, (deadline, timeout) in list(self._pending.items()):
            if fut.done():
                continue
            if deadline <= now:
                fut.set_exception(CallTimeout(f"no reply within {timeout:g}s; a late reply will be dropped"))
            elif timeout:
                left = True
        return not left

    async def receive(self) -> Message:
        """The next message; raises :class:`NotRunning` once the mailbox is closed and drained."""
        while not self._q:
            if self._closed:
                raise NotRunning(f"mailbox of {self.owner} is closed")
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        msg = self._q.popleft()
        if self._putters:
            p = self._putters.popleft()
            if not p.done():
                p.set_result(None)
        return msg

    def __aiter__(self) -> Mailbox:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except NotRunning:
            raise StopAsyncIteration from None

    def close(self, reason: object = "exited") -> None:
        """Close: pending and queued callers fail now with :class:`CalleeExited`; blocked senders too."""
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        if self._pending or self._q:
            exc = f"{self.owner} exited before replying ({reason})"
            for fut in self._pending:
                if not fut.done():
                    fut.set_exception(CalleeExited(exc))
            self._pending.clear()
            for msg in self._q:
                if isinstance(msg, Call):
                    msg.fail(CalleeExited(exc))
            self._q.clear()
        for p in self._putters:
            if not p.done():
                p.set_result(None)
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)


class Registry:
    """Names to live mailboxes. A name is freed when its mailbox closes."""

    __slots__ = ("_names",)

    def __init__(self) -> None:
        self._names: dict[str, Mailbox] = {}

    def register(self, name: str, mailbox: Mailbox) -> None:
        if not isinstance(name, str) or not name:
            raise OperationError(f"register: name must be a non-empty string, got {name!r}")
        current = self._names.get(name)
        if current is not None and not current.closed and current is not mailbox:
            raise OperationError(f"register: name {name!r} is already taken by {current.owner}")
        self._names[name] = mailbox

    def unregister(self, name: str, mailbox: Mailbox | None = None) -> None:
        if mailbox is None or self._names.get(name) is mailbox:
            self._names.pop(name, None)

    def whereis(self, name: str) -> Mailbox | None:
        mb = self._names.get(name)
        if mb is None or mb.closed:
            return None
        return mb

    def names(self) -> list[str]:
        return sorted(n for n, mb in self._names.items() if not mb.closed)


def mailbox_of(registry: Registry, mailboxes: dict[str, Mailbox], target: str) -> Mailbox:
    """The live mailbox of a registered name or a child path; NotRunning when there is none."""
    mb = registry.whereis(target) or mailboxes.get(target.strip("/"))
    if mb is None or mb.closed:
        raise NotRunning(f"nothing running as {target!r} (unknown, restarting or without a mailbox)")
    return mb


class Remote(Protocol):
    """Where a call or cast goes when nothing in this tree answers to its target: the tree of another process (an
    isolated subtree's, or the daemon's seen from one). It raises what a local mailbox would: ``NotRunning``,
    ``CallTimeout``, ``CalleeExited``, ``MailboxFull``."""

    async def call(self, target: str, payload: Any, timeout: float | None) -> Any: ...

    async def cast(self, target: str, payload: Any) -> None: ...


async def call_in(  # noqa: PLR0917
    registry: Registry,
    mailboxes: dict[str, Mailbox],
    remote: Remote | None,
    target: str,
    payload: Any,
    timeout: float | None,
) -> Any:
    """Call ``target`` here, or — when nothing here answers to it — through ``remote``."""
    try:
        mb = mailbox_of(registry, mailboxes, target)
    except NotRunning:
        if remote is None:
            raise
        return await remote.call(target, payload, timeout)
    return await mb.call(payload, timeout)


async def cast_in(
    registry: Registry, mailboxes: dict[str, Mailbox], remote: Remote | None, target: str, payload: Any
) -> None:
    """Cast to ``target`` here, or — when nothing here answers to it — through ``remote``."""
    try:
        mb = mailbox_of(registry, mailboxes, target)
    except NotRunning:
        if remote is None:
            raise
        await remote.cast(target, payload)
        return
    await mb.cast(payload)
