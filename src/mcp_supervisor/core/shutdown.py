"""Stopping children, written once: ask, wait up to the shutdown spec, force; report what could not be forced.

An OS process is asked with SIGTERM to its group and forced with SIGKILL. An in-process task is asked by
cancellation; it cannot be forced, so one that overruns its time is reported (``ChildUnstopped``) and kept
referenced until it ends, never claimed stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .child import Child
from .clock import all_done, wait_done
from .events import ChildUnstopped, ShutdownTimeout
from .runtime import Runtime
from .state import State

KILL_WAIT = 10.0  # seconds to wait for the kernel after SIGKILL


class Stopper:
    """Stops the children of one supervisor. ``finish`` records the end of an incarnation whose task never ran
    (a task cancelled before its first step runs neither its body nor its ``finally``: trap T7)."""

    def __init__(self, rt: Runtime, finish: Callable[[Child], None]) -> None:
        self.rt = rt
        self.finish = finish

    def ask(self, child: Child, force: bool) -> None:
        child.stop_requested = True
        child.state = State.STOPPING
        if child.ctx is not None:
            child.ctx.stop_requested()
        proc = child.proc
        if proc is not None:
            proc.kill() if force else proc.terminate()
        elif child.task is not None:
            child.task.cancel()

    async def stop(self, child: Child) -> bool:
        """Stop one child within its shutdown spec. True if it stopped."""
        child.token = None
        child.next_restart_at = None
        task = child.task
        if task is None or not child.alive:
            child.state = State.STOPPED
            child.task = None
            return True
        timeout = child.spec.shutdown_timeout
        self.ask(child, force=timeout == 0)
        stopped = await wait_done(self.rt.clock, task, timeout)
        if stopped:
            self.finish(child)
        else:
            stopped = await self.force(child, task, timeout or 0.0)
        child.state = State.STOPPED
        child.task = None
        return stopped

    async def force(self, child: Child, task: asyncio.Task[Any], timeout: float) -> bool:
        rt = self.rt
        if rt.bus.active:
            rt.bus.emit(ShutdownTimeout(path=child.path, timeout_s=timeout))
        if child.proc is not None:
            child.proc.kill()
            if await wait_done(None, task, KILL_WAIT):
                return True
        rt.unstopped.append(child.path)
        rt.keep(task)  # a detached task stays referenced until it ends
        child.exit_fut = None  # detached: its supervisor may start a new incarnation (OTP would have killed it)
        if rt.bus.active:
            rt.bus.emit(ChildUnstopped(path=child.path, timeout_s=timeout))
        return False

    async def stop_in_reverse(self, children: list[Child]) -> None:
        """One at a time, last started first (a group restart, a supervisor giving up or stopping)."""
        for c in reversed(children):
            await self.stop(c)

    async def stop_together(self, children: list[Child], timeout: float | None) -> None:
        """All at once under one shared timer (a simple_one_for_one supervisor stopping)."""
        live = [c for c in children if c.alive and c.task is not None]
        for c in children:
            c.token = None
        for c in live:
            self.ask(c, force=timeout == 0)
        tasks: list[asyncio.Future[Any]] = [c.task for c in live if c.task is not None]
        if tasks and not await wait_done(self.rt.clock, all_done(tasks), timeout):
            for c in live:
                if c.task is not None and not c.task.done():
                    await self.force(c, c.task, timeout or 0.0)
        for c in live:
            self.finish(c)
        for c in children:
            c.state = State.STOPPED
            c.task = None
