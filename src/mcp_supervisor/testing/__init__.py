"""Test helpers for trees and workers, used by this project's tests and benchmarks and offered to yours.

- ``ManualClock``: a clock the test moves (restart delays, intensity windows, timeouts without sleeping).
- ``Recorder``: every event of a tree's bus, with ``await rec.wait_for(ChildStarted, path="web")``.
- ``Scripted``: suture's test service, a worker each incarnation of which the test tells how to end.
- ``until`` (async) and ``wait_until`` (blocking): poll a condition with a deadline, never a bare sleep.
- ``free_port``, ``alive``: a free loopback port; whether a pid is a running (not zombie) process.

``mcp_supervisor.testing.servers`` starts private PostgreSQL, Redis, moto and OpenBao servers on free loopback
ports; ``mcp_supervisor.testing.daemon`` runs ``mcp-supervisor run`` as a subprocess with its own runtime directory.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..core import Event, EventBus, ManualClock, Shutdown, Subscription

__all__ = ["ManualClock", "Recorder", "Scripted", "alive", "free_port", "until", "wait_until"]

E = TypeVar("E", bound=Event)


def _polls(cond: Callable[[], Any], timeout: float, what: str) -> Iterator[Any]:
    """``cond()`` until it is truthy (the last value yielded), AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield None
    yield value


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` (yielding to the loop) until it is truthy; fail after ``timeout`` seconds."""
    for value in _polls(cond, timeout, what):
        if value:
            return value
        await asyncio.sleep(0.002)
    raise AssertionError("unreachable")


class Recorder:
    """Records every event of a bus; ``await rec.wait(pred)`` returns the first matching event."""

    def __init__(self, bus: EventBus) -> None:
        self.sub: Subscription = bus.subscribe(maxlen=1_000_000)
        self.seen: list[Event] = []

    def drain(self) -> list[Event]:
        while (ev := self.sub.get_nowait()) is not None:
            self.seen.append(ev)
        return self.seen

    def of(self, cls: type[Event], path: str | None = None) -> list[Any]:
        return [e for e in self.drain() if isinstance(e, cls) and (path is None or e.path == path)]

    async def wait(self, pred: Callable[[Event], bool], timeout: float = 10.0, what: str = "event") -> Any:
        return await until(lambda: next((e for e in self.drain() if pred(e)), None), timeout, what)

    async def wait_for(self, cls: type[E], timeout: float = 10.0, **fields: object) -> E:
        """The first ``cls`` event whose attributes equal ``fields``."""

        def match(e: Event) -> bool:
            return isinstance(e, cls) and all(getattr(e, k) == v for k, v in fields.items())

        found: E = await self.wait(match, timeout, f"{cls.__name__} {fields}")
        return found


class Scripted:
    """A scriptable in-process worker (suture's test service): tests tell each incarnation how to end."""

    def __init__(self, log: list[tuple[str, str]] | None = None, *, fail_starts: int = 0, ready: bool = True):
        self.log = log if log is not None else []
        self.fail_starts = fail_starts
        self.ready = ready
        self.current: asyncio.Future[str] | None = None
        self.incarnations = 0
        self.release_cleanup: asyncio.Event | None = None

    async def run(self, ctx: Any) -> None:
        self.log.append(("start", ctx.path))
        self.incarnations += 1
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise RuntimeError("boom during start")
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.current = fut
        mb = ctx.mailbox
        if self.ready:
            ctx.started(self)
        waiter: asyncio.Future[Any] | None = None
        try:
            while True:
                waiter = asyncio.ensure_future(mb.receive())
                done, _ = await asyncio.wait({waiter, fut}, return_when=asyncio.FIRST_COMPLETED)
                if waiter not in done:
                    break
                msg = waiter.result()
                if hasattr(msg, "reply"):
                    msg.reply(("echo", msg.payload))
        finally:
            if waiter is not None:
                waiter.cancel()
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()
            self.log.append(("stop", ctx.path))
            if self.release_cleanup is not None:
                await asyncio.shield(self.release_cleanup.wait())
        action = fut.result()
        if action == "normal":
            return
        if action == "shutdown":
            raise Shutdown()
        raise RuntimeError(f"crash requested ({action})")

    def end(self, how: str = "crash") -> None:
        assert self.current is not None and not self.current.done(), "worker is not running"
        self.current.set_result(how)


def wait_until(cond: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``cond`` (blocking) until it is truthy; fail after ``timeout`` seconds."""
    for value in _polls(cond, timeout, what):
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("unreachable")


def free_port() -> int:
    """A loopback TCP port nobody listens on now, below the kernel's ephemeral range: an outgoing connection or a
    port-0 bind elsewhere (another test's proxy, a client) cannot take it before it is used."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    for _ in range(200) if first > 11000 else ():
        port = 10000 + random.randrange(first - 10000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (OSError, IndexError):  # gone between open and read
        return False
