"""The life of one incarnation of a child: its task, its readiness within the start timeout, and its end.

``Starter.start`` creates the child's task and waits until it reports ready (``ctx.started``) — a failure or a start
timeout first is a start failure. When the task ends, ``finish`` records the end exactly once (also for a task
cancelled before it ran: trap T7), emits ``ChildExited``, and tells the supervisor, unless it asked for the stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NoReturn

from .child import Child
from .context import ChildContext, current_child
from .errors import Shutdown, describe
from .events import (
    NORMAL,
    SHUTDOWN,
    ChildExited,
    ChildStarted,
    CrashLoopEnded,
    CrashLoopStarted,
    ExitReason,
    StartFailed,
)
from .forensics import NEAR_LIMIT, ExitRecord, OomEvidence, classify, stable_after
from .process import OsProcess, run_process
from .runtime import Runtime
from .specs import ProcessSpec, SupervisorSpec, WorkerSpec
from .state import State


class StartFailure(Exception):
    """The child did not become ready: ``reason`` says why (the supervisor decides what that means)."""

    def __init__(self, reason: ExitReason) -> None:
        self.reason = reason
        super().__init__(str(reason))


class _StartTimeout(Exception):
    pass


def _start_timed_out(ready: asyncio.Future[Any]) -> None:
    if not ready.done():
        ready.set_exception(_StartTimeout())


def _spawned(child: Child, rt: Runtime, proc: OsProcess) -> None:
    child.proc = proc
    child.pid = proc.pid
    if proc.control is not None:  # handed over once: the other side owns it from now on
        control, proc.control = proc.control, None
        if rt.on_control is not None:
            rt.on_control(child.path, control)
        else:
            control.close()


class Starter:
    """Starts the children of one supervisor and records their ends.

    ``run_supervisor`` runs a nested supervisor (the supervisor module passes its own class's run); ``stop`` stops a
    child that overran its start timeout; ``exited`` tells the supervisor of an exit it did not ask for.
    """

    def __init__(
        self,
        rt: Runtime,
        run_supervisor: Callable[[SupervisorSpec, str, ChildContext[Any]], Awaitable[None]],
        stop: Callable[[Child], Awaitable[bool]],
        exited: Callable[[Child, int, ExitReason], None],
        period: Callable[[], float] = lambda: 5.0,
    ) -> None:
        self.rt = rt
        self._period = period  # the supervisor's intensity period: the window of a crash loop
        self._run_supervisor = run_supervisor
        self._stop = stop
        self._exited = exited

    async def start(self, child: Child) -> None:
        """Start one child and wait until it is ready; raises StartFailure."""
        rt = self.rt
        loop = asyncio.get_running_loop()
        child.gen += 1
        gen = child.gen
        child.stop_requested = False
        child.state = State.STARTING
        child.handle = None
        child.sub = None
        child.pid = None
        child.proc = None
        child.spawned_at = time.time()
        child.ready_at = None
        exit_fut: asyncio.Future[ExitReason] = loop.create_future()
        ready: asyncio.Future[Any] = loop.create_future()
        child.exit_fut = exit_fut
        child.ready_fut = ready
        spec = child.spec
        args = spec.args if isinstance(spec, WorkerSpec) else ()
        ctx = ChildContext[Any](
            child.path, child.id, tuple(args), ready, rt, shutdown_s=spec.shutdown_timeout,
            fencing_token=spec.fencing_token,
        )  # fmt: skip
        child.ctx = ctx
        child.task = loop.create_task(self._main(child, gen, ctx, exit_fut), name=child.path)
        start_timeout = None if isinstance(spec, SupervisorSpec) else spec.start_timeout
        timer = rt.clock.call_later(start_timeout, partial(_start_timed_out, ready)) if start_timeout else None
        try:
            handle = await ready
        except _StartTimeout:
            await self._stop(child)
            reason = ExitReason("abnormal", f"not ready within its start timeout of {start_timeout:g}s")
            self._failed(child, reason)
        except StartFailure as e:
            self._failed(child, e.reason)
        finally:
            if timer is not None:
                timer.cancel()
        child.handle = handle
        if isinstance(spec, SupervisorSpec):
            child.sub = handle  # the running nested supervisor, which the tree's lookups walk into
        child.state = State.RUNNING
        child.started_at = rt.clock.now()
        child.ready_at = time.time()
        if child.loops.episode is not None:  # crash-looping: the episode ends if this incarnation stays up
            rt.clock.call_later(stable_after(self._period()), partial(self._stayed_up, child, gen))
        if child.last_exit is not None or child.restarts:
            child.restarts += 1
        rt.notify_running(child.path)
        if rt.bus.active:
            rt.bus.emit(ChildStarted(path=child.path, kind=spec.kind, pid=child.pid, restarts=child.restarts))

    def _failed(self, child: Child, reason: ExitReason) -> NoReturn:
        child.state = State.STOPPED
        child.task = None
        child.last_exit = reason
        child.last_exit_at = time.time()
        record = self._record(child, reason, ready=False)
        if self.rt.bus.active:
            self.rt.bus.emit(StartFailed(path=child.path, reason=reason, cause=record.cause))
        self._loop_check(child, record)
        raise StartFailure(reason)

    def _record(self, child: Child, reason: ExitReason, ready: bool) -> ExitRecord:
        """The incarnation's exit record, added to the child's history."""
        proc = child.proc
        usage = proc.usage if proc is not None else None
        oom = None
        if usage is not None and isinstance(child.spec, ProcessSpec):
            limit = usage.memory_limit(child.spec.limits.get("memory"), child.spec.max_memory)
            near = limit is not None and usage.peak() >= NEAR_LIMIT * limit
            oom = OomEvidence(kills=usage.oom_kills(), own_cgroup=usage.own_cgroup, near_limit=near)
        cause, certainty = classify(ready, reason, oom)
        record = ExitRecord(
            pid=child.pid, started_at=child.spawned_at or time.time(), ready_at=child.ready_at if ready else None,
            ended_at=time.time(), reason=reason, cause=cause, certainty=certainty,
            peak_rss_bytes=usage.peak() if usage is not None else None,
            cpu_s=usage.cpu_s if usage is not None else None,
            last_lines=tuple(proc.tail) if proc is not None else (),
        )  # fmt: skip
        child.history.append(record)
        child.exits[cause] = child.exits.get(cause, 0) + 1
        return record

    def _loop_check(self, child: Child, record: ExitRecord) -> None:
        episode = child.loops.ended(record, self._period())
        if episode is not None and self.rt.bus.active:
            self.rt.bus.emit(CrashLoopStarted(path=child.path, cause=episode.cause, count=episode.count,
                                              since=episode.since, line=episode.line))  # fmt: skip

    def _stayed_up(self, child: Child, gen: int) -> None:
        if child.gen != gen or child.state is not State.RUNNING:
            return
        episode = child.loops.stayed_up()
        if episode is not None and self.rt.bus.active:
            self.rt.bus.emit(CrashLoopEnded(path=child.path, cause=episode.cause, count=episode.count,
                                            since=episode.since))  # fmt: skip

    async def _main(self, child: Child, gen: int, ctx: ChildContext[Any], exit_fut: asyncio.Future[ExitReason]) -> None:
        spec = child.spec
        reason = NORMAL
        current_child.set(child.path)  # this task's own context: its log lines carry the child's path
        try:
            if isinstance(spec, WorkerSpec):
                await spec.run(ctx)
            elif isinstance(spec, SupervisorSpec):
                await self._run_supervisor(spec, child.path, ctx)
            else:
                rt = self.rt
                reason = await run_process(
                    spec,
                    child.path,
                    ctx,
                    rt.bus,
                    rt.get_guardian(),
                    rt.escapes,
                    partial(_spawned, child, rt),
                    rt.sockets,
                    rt.cgroups,
                    rt.forks,
                )
        except Shutdown as e:
            reason = ExitReason("shutdown", "" if e.reason == "shutdown" else e.reason)
        except asyncio.CancelledError:
            if child.stop_requested and child.gen == gen:
                reason = SHUTDOWN
            else:
                reason = ExitReason("abnormal", "cancelled by something other than its supervisor")
                self.finish(child, gen, ctx, exit_fut, reason)
                raise
        except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt in a child is its own failure
            reason = ExitReason("abnormal", describe(e))
        self.finish(child, gen, ctx, exit_fut, reason)

    def finish(
        self,
        child: Child,
        gen: int,
        ctx: ChildContext[Any],
        exit_fut: asyncio.Future[ExitReason],
        reason: ExitReason | None,
    ) -> None:
        """Record an incarnation's end exactly once (also when its task never ran: trap T7)."""
        if exit_fut.done():
            return
        if reason is None:
            reason = SHUTDOWN if child.stop_requested else ExitReason("abnormal", "task ended before it ran")
        ctx.end(reason)
        exit_fut.set_result(reason)
        ready = child.ready_fut if child.gen == gen else None
        if ready is not None:
            if not ready.done():
                ready.set_exception(StartFailure(reason))
                return
            if ready.cancelled() or ready.exception() is not None:  # never became ready: a start failure
                return
        if child.gen != gen:
            return
        uptime = self.rt.clock.now() - child.started_at if child.started_at is not None else 0.0
        child.last_exit = reason
        child.last_exit_at = time.time()
        record = self._record(child, reason, ready=True)
        if self.rt.bus.active:
            self.rt.bus.emit(ChildExited(path=child.path, kind=child.spec.kind, reason=reason, pid=child.pid,
                                         uptime_s=uptime, cause=record.cause))  # fmt: skip
        self._loop_check(child, record)
        if not child.stop_requested:
            self._exited(child, gen, reason)

    def finish_unstarted(self, child: Child) -> None:
        """After a stop: record the end of an incarnation whose task ended without running (trap T7)."""
        if child.exit_fut is not None and not child.exit_fut.done() and child.ctx is not None:
            self.finish(child, child.gen, child.ctx, child.exit_fut, None)
