"""The supervisor: starts children in order, applies restart strategies and intensity, stops in reverse.

Each child runs in its own task and reports its exit to its supervisor as a message (never through a task group,
which would make every failure one_for_all-plus-escalate; trap T3). The supervisor handles one message at a time
in its own task: child exits, due restarts and runtime operations, so its state has a single writer.
Restart delays are timers that post a message: they never block the supervisor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

from .clock import LoopClock, wait_done
from .context import ChildContext, current_child
from .errors import FailedToStartChild, NoSuchPath, NotRunning, OperationError, Shutdown, SpecError, describe
from .events import (
    NORMAL,
    SHUTDOWN,
    ChildExited,
    ChildStarted,
    ChildUnstopped,
    ExitReason,
    IntensityExceeded,
    RestartScheduled,
    ShutdownTimeout,
    StartFailed,
    SupervisorStopped,
)
from .intensity import RestartWindow
from .runtime import Runtime
from .specs import (
    AutoShutdown,
    ChildSpec,
    ProcessSpec,
    Restart,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    WorkerSpec,
)

_KILL_WAIT = 10.0  # seconds to wait for the kernel after SIGKILL


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _StartTimeout(Exception):
    pass


def _start_timed_out(ready: asyncio.Future[Any]) -> None:
    if not ready.done():
        ready.set_exception(_StartTimeout())


class _StartFailure(Exception):
    def __init__(self, reason: ExitReason) -> None:
        self.reason = reason
        super().__init__(str(reason))


class Child:
    """The supervisor's record of one child across its incarnations."""

    __slots__ = (
        "spec", "id", "path", "state", "task", "exit_fut", "ready_fut", "handle", "ctx", "proc", "pid",
        "restarts", "started_at", "last_exit", "last_exit_at", "next_restart_at", "stop_requested", "token",
        "attempt", "gen",
    )  # fmt: skip

    def __init__(self, spec: ChildSpec, path: str) -> None:
        self.spec = spec
        self.id = spec.id
        self.path = path
        self.state = State.STOPPED
        self.task: asyncio.Task[Any] | None = None
        self.exit_fut: asyncio.Future[ExitReason] | None = None
        self.ready_fut: asyncio.Future[Any] | None = None
        self.handle: Any = None
        self.ctx: ChildContext | None = None
        self.proc: Any = None
        self.pid: int | None = None
        self.restarts = 0
        self.started_at: float | None = None
        self.last_exit: ExitReason | None = None
        self.last_exit_at: float | None = None  # wall clock
        self.next_restart_at: float | None = None  # clock time
        self.stop_requested = False
        self.token: object | None = None
        self.attempt = 0
        self.gen = 0

    @property
    def alive(self) -> bool:
        return self.exit_fut is not None and not self.exit_fut.done()


@dataclass(frozen=True, slots=True)
class _Exited:
    child: Child
    gen: int
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class _RestartDue:
    token: object


@dataclass(frozen=True, slots=True)
class _Request:
    op: Callable[[], Coroutine[Any, Any, Any]]
    reply: asyncio.Future[Any]


_Msg = _Exited | _RestartDue | _Request


class Supervisor:
    """One supervisor of the tree. Its public methods are the runtime operations (OTP's API)."""

    def __init__(self, spec: SupervisorSpec, path: str, rt: Runtime) -> None:
        self.spec = spec
        self.flags = spec.flags
        self.path = path
        self.rt = rt
        self.children: list[Child] = []
        self.by_id: dict[str, Child] = {}
        self._window = RestartWindow(spec.flags.intensity, spec.flags.period)
        self._inbox: deque[_Msg] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._done: ExitReason | None = None
        self._closed = False  # stopping or stopped: every request fails at once (OTP answers noproc)
        self._seq = 0
        self._dynamic = spec.flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE

    # -- paths and records --------------------------------------------------------------------------------
    def _child_path(self, child_id: str) -> str:
        return f"{self.path}/{child_id}" if self.path else child_id

    def _add(self, spec: ChildSpec) -> Child:
        child = Child(spec, self._child_path(spec.id))
        self.children.append(child)
        self.by_id[spec.id] = child
        return child

    def _remove(self, child: Child) -> None:
        if self.by_id.get(child.id) is child:
            del self.by_id[child.id]
            self.children.remove(child)

    # -- the supervisor's own life ------------------------------------------------------------------------
    async def run(self, ctx: ChildContext) -> None:
        try:
            if not self._dynamic:
                for spec in self.spec.children:
                    self._add(spec)
                for child in list(self.children):
                    try:
                        await self._start(child)
                    except _StartFailure as e:
                        await self._stop_all()
                        raise FailedToStartChild(child.path, str(e.reason)) from None
                    if child.spec.restart is Restart.TEMPORARY and not child.alive:
                        self._remove(child)
            ctx.started(self)
            while self._done is None:
                msg = await self._next()
                await self._dispatch(msg)
            raise Shutdown(self._done.detail)
        except asyncio.CancelledError:  # our parent is stopping us (or the tree is stopping)
            self._close()
            await self._stop_all()
            raise
        finally:
            self._close()

    async def _next(self) -> _Msg:
        while not self._inbox:
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        return self._inbox.popleft()

    def _post(self, msg: _Msg) -> None:
        self._inbox.append(msg)
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    @property
    def running(self) -> bool:
        """False from the moment it starts stopping: requests to it then fail at once with NotRunning."""
        return not self._closed

    def _not_running(self) -> NotRunning:
        return NotRunning(f"supervisor {self.path or '/'!r} is stopping or has stopped")

    def _close(self) -> None:
        """Stop accepting requests; fail the queued ones now rather than after the children have stopped."""
        self._closed = True
        kept: deque[_Msg] = deque()
        for msg in self._inbox:
            if isinstance(msg, _Request):
                if not msg.reply.done():
                    msg.reply.set_exception(self._not_running())
            else:
                kept.append(msg)
        self._inbox = kept

    async def _dispatch(self, msg: _Msg) -> None:
        match msg:
            case _Exited(child, gen, reason):
                if child.gen == gen and not child.stop_requested and self.by_id.get(child.id) is child:
                    await self._on_exit(child, reason)
            case _RestartDue(token):
                group = [c for c in self.children if c.token is token]
                if group:
                    for c in group:
                        c.token = None
                        c.next_restart_at = None
                    await self._start_group(group)
            case _Request(op, reply):
                if reply.done():
                    return
                try:
                    result = await op()
                except asyncio.CancelledError:
                    if not reply.done():
                        reply.set_exception(self._not_running())
                    raise
                except Exception as e:  # noqa: BLE001 - an operation error goes back to its caller
                    if not reply.done():
                        reply.set_exception(e)
                else:
                    if not reply.done():
                        reply.set_result(result)

    # -- starting ------------------------------------------------------------------------------------------
    async def _start(self, child: Child) -> None:
        """Start one child and wait until it is ready; raises _StartFailure."""
        rt = self.rt
        loop = asyncio.get_running_loop()
        child.gen += 1
        gen = child.gen
        child.stop_requested = False
        child.state = State.STARTING
        child.handle = None
        child.pid = None
        child.proc = None
        exit_fut: asyncio.Future[ExitReason] = loop.create_future()
        ready: asyncio.Future[Any] = loop.create_future()
        child.exit_fut = exit_fut
        child.ready_fut = ready
        spec = child.spec
        ctx = ChildContext(child.path, child.id, getattr(spec, "args", ()), ready, rt)
        child.ctx = ctx
        task = loop.create_task(self._child_main(child, gen, ctx, exit_fut), name=child.path)
        child.task = task
        start_timeout = None if isinstance(spec, SupervisorSpec) else spec.start_timeout
        timer = rt.clock.call_later(start_timeout, partial(_start_timed_out, ready)) if start_timeout else None
        try:
            handle = await ready
        except _StartTimeout:
            await self._stop_child(child)
            self._start_failed(
                child, ExitReason("abnormal", f"not ready within its start timeout of {start_timeout:g}s")
            )
        except _StartFailure as e:
            self._start_failed(child, e.reason)
        finally:
            if timer is not None:
                timer.cancel()
        child.handle = handle
        child.state = State.RUNNING
        child.started_at = rt.clock.now()
        if child.last_exit is not None or child.restarts:
            child.restarts += 1
        if rt._handle_waiters:
            rt.notify_running(child.path)
        if rt.bus.active:
            rt.bus.emit(ChildStarted(path=child.path, kind=spec.kind, pid=child.pid, restarts=child.restarts))

    def _start_failed(self, child: Child, reason: ExitReason) -> NoReturn:
        child.state = State.STOPPED
        child.task = None
        child.last_exit = reason
        child.last_exit_at = _wall()
        if self.rt.bus.active:
            self.rt.bus.emit(StartFailed(path=child.path, reason=reason))
        raise _StartFailure(reason)

    async def _child_main(
        self, child: Child, gen: int, ctx: ChildContext, exit_fut: asyncio.Future[ExitReason]
    ) -> None:
        spec = child.spec
        reason = NORMAL
        current_child.set(child.path)  # this task's own context: its log lines carry the child's path
        try:
            if isinstance(spec, WorkerSpec):
                await spec.run(ctx)
            elif isinstance(spec, SupervisorSpec):
                await Supervisor(spec, child.path, self.rt).run(ctx)
            else:
                from .process import run_process

                reason = await run_process(spec, child, ctx, self.rt)
        except Shutdown as e:
            reason = ExitReason("shutdown", "" if e.reason == "shutdown" else e.reason)
        except asyncio.CancelledError:
            if child.stop_requested and child.gen == gen:
                reason = SHUTDOWN
            else:
                reason = ExitReason("abnormal", "cancelled by something other than its supervisor")
                self._finish(child, gen, ctx, exit_fut, reason)
                raise
        except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt in a child is its own failure
            reason = ExitReason("abnormal", describe(e))
        self._finish(child, gen, ctx, exit_fut, reason)

    def _finish(
        self,
        child: Child,
        gen: int,
        ctx: ChildContext,
        exit_fut: asyncio.Future[ExitReason],
        reason: ExitReason | None,
    ) -> None:
        """Record an incarnation's end exactly once (also when its task never ran: trap T7)."""
        if exit_fut.done():
            return
        if reason is None:
            reason = SHUTDOWN if child.stop_requested else ExitReason("abnormal", "task ended before it ran")
        ctx._close(reason)
        exit_fut.set_result(reason)
        ready = child.ready_fut if child.gen == gen else None
        if ready is not None:
            if not ready.done():
                ready.set_exception(_StartFailure(reason))
                return
            if ready.cancelled() or ready.exception() is not None:  # never became ready: a start failure
                return
        if child.gen != gen:
            return
        now = self.rt.clock.now()
        uptime = now - child.started_at if child.started_at is not None else 0.0
        child.last_exit = reason
        child.last_exit_at = _wall()
        if self.rt.bus.active:
            self.rt.bus.emit(
                ChildExited(path=child.path, kind=child.spec.kind, reason=reason, pid=child.pid, uptime_s=uptime)
            )
        if not child.stop_requested:
            self._post(_Exited(child, gen, reason))

    # -- exits and restarts --------------------------------------------------------------------------------
    async def _on_exit(self, child: Child, reason: ExitReason) -> None:
        child.task = None
        child.state = State.STOPPED
        spec = child.spec
        if spec.restart is Restart.TEMPORARY or (spec.restart is Restart.TRANSIENT and reason.kind != "abnormal"):
            if spec.restart is Restart.TEMPORARY or self._dynamic:
                self._remove(child)
            if spec.significant:
                await self._auto_shutdown()
            return
        if spec.backoff is not None and child.started_at is not None:
            if self.rt.clock.now() - child.started_at >= spec.backoff.stable_after:
                child.attempt = 0
        await self._restart(child)

    def _count_restart(self) -> bool:
        return self._window.add(self.rt.clock.now())

    @property
    def restart_attempts(self) -> tuple[float, ...]:
        """Clock times of the restart attempts in the current intensity window."""
        return self._window.attempts

    async def _give_up(self, reason: ExitReason) -> None:
        self._close()
        await self._stop_all()
        self._done = reason
        if self.rt.bus.active:
            self.rt.bus.emit(SupervisorStopped(path=self.path, reason=reason))

    async def _intensity_exceeded(self) -> None:
        if self.rt.bus.active:
            self.rt.bus.emit(
                IntensityExceeded(path=self.path, intensity=self.flags.intensity, period=self.flags.period)
            )
        await self._give_up(ExitReason("shutdown", "reached_max_restart_intensity"))

    async def _auto_shutdown(self) -> None:
        mode = self.flags.auto_shutdown
        if mode is AutoShutdown.ANY_SIGNIFICANT or (
            mode is AutoShutdown.ALL_SIGNIFICANT
            and not any(c.spec.significant and c.state is not State.STOPPED for c in self.children)
        ):
            await self._give_up(ExitReason("shutdown", "auto_shutdown"))

    async def _restart(self, child: Child) -> None:
        if not self._count_restart():
            await self._intensity_exceeded()
            return
        strategy = self.flags.strategy
        if strategy is Strategy.ONE_FOR_ONE or strategy is Strategy.SIMPLE_ONE_FOR_ONE:
            await self._schedule([child], child)
            return
        group = list(self.children) if strategy is Strategy.ONE_FOR_ALL else self.children[self.children.index(child) :]
        for sibling in reversed(group):
            if sibling is not child:
                await self._stop_child(sibling)
        for sibling in group:
            if sibling is not child and sibling.spec.restart is Restart.TEMPORARY:
                self._remove(sibling)
        await self._schedule([c for c in group if self.by_id.get(c.id) is c], child)

    async def _schedule(self, group: list[Child], cause: Child) -> None:
        """Start ``group`` now, or after ``cause``'s backoff delay without blocking."""
        backoff = cause.spec.backoff
        delay = 0.0
        if backoff is not None:
            delay = backoff.delay(cause.attempt, self.rt.rand.random())
            cause.attempt += 1
        if self.rt.bus._subs:
            self.rt.bus.emit(RestartScheduled(path=cause.path, delay_s=delay, attempt=cause.attempt))
        if delay <= 0:
            if len(group) == 1:
                try:
                    await self._start(cause)
                except _StartFailure:
                    await self._retry_after_failure(group, 0)
            else:
                await self._start_group(group)
            return
        token = object()
        at = self.rt.clock.now() + delay
        for c in group:
            c.token = token
            c.next_restart_at = at
            if not c.alive:  # a one_for_all retry stops its running members only when it is due
                c.state = State.RESTARTING
        self.rt.clock.call_later(delay, lambda: self._post(_RestartDue(token)))

    async def _start_group(self, group: list[Child]) -> None:
        if self.flags.strategy is Strategy.ONE_FOR_ALL:
            for c in reversed(group):  # members a failed attempt had started go too, in reverse order
                if c.alive:
                    await self._stop_child(c)
        for i, c in enumerate(group):
            if self.by_id.get(c.id) is not c or c.alive:
                continue
            try:
                await self._start(c)
            except _StartFailure:
                await self._retry_after_failure(group, i)
                return

    async def _retry_after_failure(self, group: list[Child], i: int) -> None:
        """A start in ``group`` failed at ``i``: count the attempt, then try again after queued requests.

        one_for_all restarts the whole group next time (OTP's ``restart(one_for_all, ...)`` terminates the children
        the failed attempt had started); one_for_one and rest_for_one resume from the child that failed.
        """
        if not self._count_restart():
            await self._intensity_exceeded()
            return
        c = group[i]
        retry = group if self.flags.strategy is Strategy.ONE_FOR_ALL else group[i:]
        retry = [r for r in retry if self.by_id.get(r.id) is r]
        for r in retry:
            if not r.alive:
                r.state = State.RESTARTING
        if c.spec.backoff is not None:
            await self._schedule(retry, c)
        else:
            token = object()
            for r in retry:
                r.token = token
            self._post(_RestartDue(token))  # retry after queued requests: stay responsive

    # -- stopping ------------------------------------------------------------------------------------------
    async def _stop_child(self, child: Child) -> bool:
        """Ask one child to stop, wait up to its shutdown time, then force it. True if it stopped."""
        child.token = None
        child.next_restart_at = None
        task = child.task
        if task is None or not child.alive:
            child.state = State.STOPPED
            child.task = None
            return True
        child.stop_requested = True
        child.state = State.STOPPING
        timeout = child.spec.shutdown_timeout
        self._signal_stop(child, force=timeout == 0)
        stopped = await wait_done(self.rt.clock, task, timeout)
        if stopped:
            self._finish_unstarted(child)
        else:
            stopped = await self._force(child, task, timeout or 0.0)
        child.state = State.STOPPED
        child.task = None
        return stopped

    def _finish_unstarted(self, child: Child) -> None:
        """A task cancelled before its first step runs neither its body nor its finally (trap T7)."""
        if child.exit_fut is not None and not child.exit_fut.done() and child.ctx is not None:
            self._finish(child, child.gen, child.ctx, child.exit_fut, None)

    def _signal_stop(self, child: Child, force: bool) -> None:
        proc = child.proc
        if proc is not None:
            proc.kill() if force else proc.terminate()
        elif child.task is not None:
            child.task.cancel()

    async def _force(self, child: Child, task: asyncio.Task[Any], timeout: float) -> bool:
        rt = self.rt
        if rt.bus.active:
            rt.bus.emit(ShutdownTimeout(path=child.path, timeout_s=timeout))
        if child.proc is not None:
            child.proc.kill()
            if await wait_done(LoopClock(), task, _KILL_WAIT):
                return True
        rt.unstopped.append(child.path)
        rt.tasks.add(task)  # keep a detached task referenced until it ends
        task.add_done_callback(rt.tasks.discard)
        if rt.bus.active:
            rt.bus.emit(ChildUnstopped(path=child.path, timeout_s=timeout))
        return False

    async def _stop_all(self) -> None:
        """Stop every child in reverse start order (dynamic children all at once, one shared timer)."""
        if self._dynamic:
            live = [c for c in self.children if c.alive and c.task is not None]
            for c in self.children:
                c.token = None
            for c in live:
                c.stop_requested = True
                c.state = State.STOPPING
                self._signal_stop(c, force=c.spec.shutdown_timeout == 0)
            if live:
                t = self.spec.template.shutdown_timeout
                if not await wait_done(self.rt.clock, _all_done([c.task for c in live if c.task]), t):
                    for c in live:
                        if c.task is not None and not c.task.done():
                            await self._force(c, c.task, t or 0.0)
                for c in live:
                    self._finish_unstarted(c)
            for c in self.children:
                c.state = State.STOPPED
                c.task = None
            self.children.clear()
            self.by_id.clear()
            return
        for c in reversed(self.children):
            await self._stop_child(c)
        for c in [c for c in self.children if c.spec.restart is Restart.TEMPORARY]:
            self._remove(c)

    # -- runtime operations (run inside the supervisor's task) --------------------------------------------
    async def _request(self, op: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        if self._closed:
            raise self._not_running()
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._post(_Request(op, reply))
        return await reply

    def _get(self, child_id: str) -> Child:
        child = self.by_id.get(child_id)
        if child is None:
            raise NoSuchPath(self._child_path(child_id))
        return child

    async def start_child(self, spec_or_args: ChildSpec | tuple[Any, ...] | list[Any]) -> Child:
        """Add and start a child (a spec; for simple_one_for_one, the arguments for the template)."""

        async def op() -> Child:
            if self._dynamic:
                if not isinstance(spec_or_args, tuple | list):
                    raise OperationError(f"{self.path or '/'}: simple_one_for_one takes a list of arguments")
                self._seq += 1
                spec = _instantiate(self.spec.template, f"{self.spec.template.id}-{self._seq}", tuple(spec_or_args))
            else:
                if not isinstance(spec_or_args, WorkerSpec | ProcessSpec | SupervisorSpec):
                    raise OperationError("start_child takes a child spec")
                spec = spec_or_args
                if spec.id in self.by_id:
                    state = self.by_id[spec.id].state
                    code = "already_present" if state is State.STOPPED else "already_started"
                    raise OperationError(f"{self._child_path(spec.id)}: already present ({state})", code)
                if spec.significant and self.flags.auto_shutdown is AutoShutdown.NEVER:
                    raise SpecError("significant", "needs auto_shutdown on the supervisor", True)
            child = self._add(spec)
            try:
                await self._start(child)
            except _StartFailure as e:
                self._remove(child)  # OTP discards the spec of a child whose start_child failed
                raise FailedToStartChild(child.path, str(e.reason)) from None
            return child

        result: Child = await self._request(op)
        return result

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child without restarting it; its spec is kept (temporary and dynamic children are removed)."""

        async def op() -> None:
            child = self._get(child_id)
            await self._stop_child(child)
            if self._dynamic or child.spec.restart is Restart.TEMPORARY:
                self._remove(child)

        await self._request(op)

    async def restart_child(self, child_id: str) -> Child:
        """Start a stopped child again from its kept spec."""

        async def op() -> Child:
            if self._dynamic:
                raise OperationError(
                    "restart_child is not supported by simple_one_for_one supervisors", "simple_one_for_one"
                )
            child = self._get(child_id)
            if child.alive or child.state is State.RESTARTING:
                raise OperationError(f"{child.path}: is {child.state}; terminate it first", _busy(child))
            try:
                await self._start(child)
            except _StartFailure as e:
                raise FailedToStartChild(child.path, str(e.reason)) from None
            return child

        result: Child = await self._request(op)
        return result

    async def delete_child(self, child_id: str) -> None:
        async def op() -> None:
            if self._dynamic:
                raise OperationError(
                    "delete_child is not supported by simple_one_for_one supervisors", "simple_one_for_one"
                )
            child = self._get(child_id)
            if child.alive or child.state is State.RESTARTING:
                raise OperationError(f"{child.path}: is {child.state}; terminate it before deleting", _busy(child))
            self._remove(child)

        await self._request(op)

    async def reconcile(
        self, specs: list[ChildSpec], replace: set[str], flags: SupervisorFlags | None = None
    ) -> list[tuple[str, str]]:
        """Make the children match ``specs`` (a config reload): start new ones, stop removed ones, restart those
        in ``replace``, and leave every other child untouched (same incarnation, same restart count).

        Returns ``(path, change)`` pairs; a child whose new start fails is reported, the rest still applies.
        """

        async def op() -> list[tuple[str, str]]:
            changes: list[tuple[str, str]] = []
            if flags is not None and flags != self.flags:
                self.flags = flags
                self._window = RestartWindow(flags.intensity, flags.period)
                changes.append((self.path, "flags"))
            wanted = {s.id for s in specs}
            for old in reversed(list(self.children)):
                if old.id not in wanted:
                    await self._stop_child(old)
                    self._remove(old)
                    changes.append((old.path, "removed"))
            order: list[Child] = []
            to_start: list[Child] = []
            for spec in specs:
                found = self.by_id.get(spec.id)
                if found is None:
                    c = Child(spec, self._child_path(spec.id))
                    self.by_id[spec.id] = c
                    to_start.append(c)
                    changes.append((c.path, "added"))
                    order.append(c)
                    continue
                c = found
                if spec.id in replace:
                    await self._stop_child(c)
                    c.spec = spec
                    c.restarts = 0
                    c.last_exit = None
                    c.attempt = 0
                    to_start.append(c)
                    changes.append((c.path, "changed"))
                else:
                    c.spec = spec  # same settings; a later restart uses the reloaded spec
                    if isinstance(spec, SupervisorSpec) and isinstance(c.handle, Supervisor):
                        c.handle.spec = spec
                order.append(c)
            self.children = order
            for c in to_start:
                try:
                    await self._start(c)
                except _StartFailure as e:
                    changes.append((c.path, f"failed to start: {e.reason}"))
            return changes

        result: list[tuple[str, str]] = await self._request(op)
        return result

    async def sync(self) -> None:
        """Return once every message posted before this call (exits, due restarts, requests) is handled."""

        async def op() -> None:
            return None

        await self._request(op)

    def which_children(self) -> list[dict[str, Any]]:
        if self._closed:
            raise self._not_running()
        return [
            {"id": c.id, "path": c.path, "kind": c.spec.kind, "state": str(c.state), "pid": c.pid}
            for c in self.children
        ]

    def count_children(self) -> dict[str, int]:
        """OTP's counts: a simple_one_for_one supervisor has one spec (its template), however many children."""
        if self._closed:
            raise self._not_running()
        supervisors = sum(1 for c in self.children if c.spec.kind == "supervisor")
        return {
            "specs": 1 if self._dynamic else len(self.children),
            "active": sum(1 for c in self.children if c.state is State.RUNNING),
            "supervisors": supervisors,
            "workers": len(self.children) - supervisors,
        }

    def get_childspec(self, child_id: str) -> ChildSpec:
        if self._closed:
            raise self._not_running()
        return self._get(child_id).spec

    @property
    def exit_reason(self) -> ExitReason | None:
        return self._done


def _busy(child: Child) -> str:
    return "restarting" if child.state is State.RESTARTING else "running"


def _instantiate(template: ChildSpec, child_id: str, args: tuple[Any, ...]) -> ChildSpec:
    if isinstance(template, WorkerSpec):
        return dataclasses.replace(template, id=child_id, args=args)
    if isinstance(template, ProcessSpec):
        return dataclasses.replace(template, id=child_id, command=(*template.command, *(str(a) for a in args)))
    return dataclasses.replace(template, id=child_id)


def _wall() -> float:
    return time.time()


def _all_done(futs: list[asyncio.Task[Any]]) -> asyncio.Future[None]:
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
