"""Helpers for in-process tree tests: polling with a deadline, an event recorder, a scriptable worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from mcp_supervisor.core import Event, EventBus, Shutdown, Subscription

E = TypeVar("E", bound=Event)


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` (yielding to the loop) until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)


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
