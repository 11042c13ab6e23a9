"""The supervisor: starts children in order, applies the restart policy and intensity, stops in reverse.

Each child runs in its own task and reports its exit to its supervisor as a message (never through a task group,
which would make every failure one_for_all-plus-escalate; trap T3). The supervisor handles one message at a time
in its own task — child exits, due restarts and runtime operations — so its state has a single writer. Restart
delays are timers that post a message: they never block the supervisor. The policy (``policy.py``), stopping
(``shutdown.py``) and reload planning (``reconcile.py``) live in their own modules; this one sequences them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, assert_never

from . import policy
from .child import Child
from .context import ChildContext
from .errors import FailedToStartChild, NoSuchPath, NotRunning, OperationError, Shutdown, SpecError
from .events import (
    ExitReason,
    IntensityExceeded,
    RestartScheduled,
    SupervisorStopped,
)
from .intensity import RestartWindow
from .reconcile import Step, plan
from .runtime import Runtime
from .shutdown import Stopper
from .specs import (
    AutoShutdown,
    Backoff,
    ChildSpec,
    ProcessSpec,
    Restart,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    WorkerSpec,
)
from .start import Starter, StartFailure
from .state import ChildCounts, NodeStatus, State, SupervisorStatistics


@dataclass(frozen=True, slots=True)
class _Exited:
    child: Child
    gen: int
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class _RestartDue:
    token: object


# -- runtime operations: the closed set of requests a supervisor handles (suture's messages.go) ---------------
@dataclass(frozen=True, slots=True)
class StartChild:
    spec_or_args: ChildSpec | tuple[Any, ...] | list[Any]


@dataclass(frozen=True, slots=True)
class TerminateChild:
    child_id: str


@dataclass(frozen=True, slots=True)
class RestartChild:
    child_id: str


@dataclass(frozen=True, slots=True)
class OperatorRestart:
    child_id: str


@dataclass(frozen=True, slots=True)
class DeleteChild:
    child_id: str


@dataclass(frozen=True, slots=True)
class Reconcile:
    specs: list[ChildSpec]
    replace: set[str]
    flags: SupervisorFlags | None


@dataclass(frozen=True, slots=True)
class Sync:
    pass


Request = StartChild | TerminateChild | RestartChild | OperatorRestart | DeleteChild | Reconcile | Sync
"""Every operation another task may ask of a supervisor; ``_handle`` matches them exhaustively."""


@dataclass(frozen=True, slots=True)
class _Call:
    request: Request
    reply: asyncio.Future[Any]


_Msg = _Exited | _RestartDue | _Call
DEFAULT_RETRY_BACKOFF = Backoff(initial=1.0, max=10.0)
"""The delays between a first start's retries (``start_retries``) for a child without a ``backoff``."""


class Supervisor:
    """One supervisor of the tree. Its public methods are the runtime operations (OTP's API)."""

    def __init__(self, spec: SupervisorSpec, path: str, rt: Runtime) -> None:
        self.spec = spec
        self.flags = spec.flags
        self.path = path
        self.rt = rt
        self._children: list[Child] = []
        self._by_id: dict[str, Child] = {}
        self._window = RestartWindow(spec.flags.intensity, spec.flags.period)
        self._inbox: deque[_Msg] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._done: ExitReason | None = None
        self._closed = False  # stopping or stopped: every request fails at once (OTP answers noproc)
        self._seq = 0
        self._dynamic = spec.flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE
        self._starter = Starter(rt, self._run_sub, self._stop_child, self._exited, lambda: self.flags.period)
        self._stopper = Stopper(rt, self._starter.finish_unstarted)

    # -- what the rest of the core sees (child.Node) ------------------------------------------------------------
    @property
    def children(self) -> list[Child]:
        return self._children

    def child(self, child_id: str) -> Child | None:
        return self._by_id.get(child_id)

    @property
    def running(self) -> bool:
        """False from the moment it starts stopping: requests to it then fail at once with NotRunning."""
        return not self._closed

    @property
    def strategy(self) -> str:
        return str(self.flags.strategy)

    @property
    def exit_reason(self) -> ExitReason | None:
        return self._done

    @property
    def restart_attempts(self) -> tuple[float, ...]:
        """Clock times of the restart attempts in the current intensity window."""
        return self._window.attempts

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            children=len(self._children),
            running=sum(1 for c in self._children if c.state is State.RUNNING),
            restarting=sum(1 for c in self._children if c.state is State.RESTARTING),
            restarts_in_window=len(self._window.attempts),
            inbox=len(self._inbox),
        )

    # -- records -------------------------------------------------------------------------------------------
    def _child_path(self, child_id: str) -> str:
        return f"{self.path}/{child_id}" if self.path else child_id

    def _add(self, spec: ChildSpec) -> Child:
        child = Child(spec, self._child_path(spec.id))
        self._children.append(child)
        self._by_id[spec.id] = child
        return child

    def _remove(self, child: Child) -> None:
        if self._by_id.get(child.id) is child:
            del self._by_id[child.id]
            self._children.remove(child)

    def _registered(self, child: Child) -> bool:
        return self._by_id.get(child.id) is child

    # -- the supervisor's own life ------------------------------------------------------------------------
    async def run(self, ctx: ChildContext[Any]) -> None:
        try:
            if not self._dynamic:
                for spec in self.spec.children:
                    self._add(spec)
                for child in list(self._children):
                    try:
                        await self._first_start(child)
                    except StartFailure as e:
                        await self._stop_all()
                        raise FailedToStartChild(child.path, str(e.reason)) from None
                    if child.spec.restart is Restart.TEMPORARY and not child.alive:
                        self._remove(child)
            ctx.started(self)
            while self._done is None:
                await self._dispatch(await self._next())
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

    def _exited(self, child: Child, gen: int, reason: ExitReason) -> None:
        self._post(_Exited(child, gen, reason))

    def _post(self, msg: _Msg) -> None:
        self._inbox.append(msg)
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    def _not_running(self) -> NotRunning:
        return NotRunning(f"supervisor {self.path or '/'!r} is stopping or has stopped")

    def _close(self) -> None:
        """Stop accepting requests; fail the queued ones now rather than after the children have stopped."""
        self._closed = True
        kept: deque[_Msg] = deque()
        for msg in self._inbox:
            if isinstance(msg, _Call):
                if not msg.reply.done():
                    msg.reply.set_exception(self._not_running())
            else:
                kept.append(msg)
        self._inbox = kept

    async def _dispatch(self, msg: _Msg) -> None:
        match msg:
            case _Exited(child, gen, reason):
                if child.gen == gen and not child.stop_requested and self._registered(child):
                    await self._on_exit(child, reason)
            case _RestartDue(token):
                group = [c for c in self._children if c.token is token]
                if group:
                    for c in group:
                        c.token = None
                        c.next_restart_at = None
                    await self._start_group(group)
            case _Call(request, reply):
                await self._answer(request, reply)
            case _:
                assert_never(msg)

    async def _answer(self, request: Request, reply: asyncio.Future[Any]) -> None:
        """Run a request; its result or its error goes back to the caller (who may have given up waiting)."""
        if reply.done():
            return
        try:
            result = await self._handle(request)
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

    async def _handle(self, request: Request) -> Any:
        match request:
            case StartChild(spec_or_args):
                return await self._start_child(spec_or_args)
            case TerminateChild(child_id):
                return await self._terminate_child(child_id)
            case RestartChild(child_id):
                return await self._restart_child(child_id)
            case OperatorRestart(child_id):
                return await self._operator_restart(child_id)
            case DeleteChild(child_id):
                return self._delete_child(child_id)
            case Reconcile(specs, replace, flags):
                return await self._reconcile(specs, replace, flags)
            case Sync():
                return None
            case _:
                assert_never(request)

    # -- starting ------------------------------------------------------------------------------------------
    async def _start_or_fail(self, child: Child) -> None:
        """A start asked for by a runtime operation: its failure is the operation's error."""
        try:
            await self._starter.start(child)
        except StartFailure as e:
            raise FailedToStartChild(child.path, str(e.reason)) from None

    async def _first_start(self, child: Child) -> None:
        """A child's first start, tried again ``start_retries`` times after its backoff's delays; raises the last
        StartFailure."""
        retries = child.spec.start_retries
        for attempt in range(retries + 1):
            try:
                await self._starter.start(child)
                return
            except StartFailure:
                if attempt == retries:
                    raise
            delay = (child.spec.backoff or DEFAULT_RETRY_BACKOFF).delay(attempt, self.rt.rand.random())
            if self.rt.bus.active:
                self.rt.bus.emit(RestartScheduled(path=child.path, delay_s=delay, attempt=attempt + 1))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.rt.clock.call_later(delay, functools.partial(_resolve, done))
            await done

    async def _stop_child(self, child: Child) -> bool:
        return await self._stopper.stop(child)

    async def _run_sub(self, spec: SupervisorSpec, path: str, ctx: ChildContext[Any]) -> None:
        await Supervisor(spec, path, self.rt).run(ctx)

    # -- exits and restarts --------------------------------------------------------------------------------
    async def _on_exit(self, child: Child, reason: ExitReason) -> None:
        child.task = None
        child.state = State.STOPPED
        spec = child.spec
        decision = policy.after_exit(spec.restart, reason.kind, dynamic=self._dynamic)
        if decision is not policy.Decision.RESTART:
            if decision is policy.Decision.REMOVE:
                self._remove(child)
            if spec.significant:
                others = any(c.spec.significant and c.state is not State.STOPPED for c in self._children)
                if policy.auto_shutdown(self.flags.auto_shutdown, others):
                    await self._give_up(ExitReason("shutdown", "auto_shutdown"))
            return
        if spec.backoff is not None and child.started_at is not None:
            if self.rt.clock.now() - child.started_at >= spec.backoff.stable_after:
                child.attempt = 0
        await self._restart(child)

    def _count_restart(self) -> bool:
        return self._window.add(self.rt.clock.now())

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

    async def _restart(self, child: Child) -> None:
        if not self._count_restart():
            await self._intensity_exceeded()
            return
        group = policy.restart_group(self.flags.strategy, self._children, child)
        if len(group) > 1:
            for sibling in reversed(group):
                if sibling is not child:
                    await self._stopper.stop(sibling)
            for sibling in policy.caught(group, child, lambda c: c.spec.restart):
                self._remove(sibling)
        await self._schedule([c for c in group if self._registered(c)], child)

    async def _schedule(self, group: list[Child], cause: Child) -> None:
        """Start ``group`` now, or after ``cause``'s backoff delay without blocking."""
        backoff = cause.spec.backoff
        delay = 0.0
        if backoff is not None:
            delay = backoff.delay(cause.attempt, self.rt.rand.random())
            cause.attempt += 1
        if self.rt.bus.active:
            self.rt.bus.emit(RestartScheduled(path=cause.path, delay_s=delay, attempt=cause.attempt))
        if delay <= 0:
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
                    await self._stopper.stop(c)
        for i, c in enumerate(group):
            if not self._registered(c) or c.alive:
                continue
            try:
                await self._starter.start(c)
            except StartFailure:
                await self._retry_after_failure(group, i)
                return

    async def _retry_after_failure(self, group: list[Child], i: int) -> None:
        """A start in ``group`` failed at ``i``: count the attempt, then try again after queued requests."""
        if not self._count_restart():
            await self._intensity_exceeded()
            return
        c = group[i]
        retry = [r for r in policy.retry_group(self.flags.strategy, group, i) if self._registered(r)]
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

    async def _stop_all(self) -> None:
        """Stop every child in reverse start order (dynamic children all at once, one shared timer)."""
        if self._dynamic:
            await self._stopper.stop_together(self._children, self.spec.template.shutdown_timeout)
            self._children.clear()
            self._by_id.clear()
            return
        await self._stopper.stop_in_reverse(self._children)
        for c in [c for c in self._children if c.spec.restart is Restart.TEMPORARY]:
            self._remove(c)

    # -- runtime operations (run inside the supervisor's task) --------------------------------------------
    async def _request(self, request: Request) -> Any:
        if self._closed:
            raise self._not_running()
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._post(_Call(request, reply))
        return await reply

    def _get(self, child_id: str) -> Child:
        child = self._by_id.get(child_id)
        if child is None:
            raise NoSuchPath(self._child_path(child_id), siblings=[c.id for c in self._children])
        return child

    def _check_open(self) -> None:
        if self._closed:
            raise self._not_running()

    async def start_child(self, spec_or_args: ChildSpec | tuple[Any, ...] | list[Any]) -> Child:
        """Add and start a child (a spec; for simple_one_for_one, the arguments for the template).

        If its start fails the spec is not kept (OTP) and the failure is raised as FailedToStartChild.
        """
        result: Child = await self._request(StartChild(spec_or_args))
        return result

    async def _start_child(self, spec_or_args: ChildSpec | tuple[Any, ...] | list[Any]) -> Child:
        if self._dynamic:
            if not isinstance(spec_or_args, tuple | list):
                raise OperationError(f"{self.path or '/'}: simple_one_for_one takes a list of arguments")
            self._seq += 1
            spec = _instantiate(self.spec.template, f"{self.spec.template.id}-{self._seq}", tuple(spec_or_args))
        else:
            if not isinstance(spec_or_args, WorkerSpec | ProcessSpec | SupervisorSpec):
                raise OperationError("start_child takes a child spec")
            spec = spec_or_args
            if spec.id in self._by_id:
                state = self._by_id[spec.id].state
                code = "already_present" if state is State.STOPPED else "already_started"
                raise OperationError(f"{self._child_path(spec.id)}: already present ({state})", code)
            if spec.significant and self.flags.auto_shutdown is AutoShutdown.NEVER:
                raise SpecError("significant", "needs auto_shutdown on the supervisor", True)
        child = self._add(spec)
        try:
            await self._start_or_fail(child)
        except FailedToStartChild:
            self._remove(child)  # OTP discards the spec of a child whose start_child failed
            raise
        return child

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child without restarting it; its spec is kept (temporary and dynamic children are removed)."""
        await self._request(TerminateChild(child_id))

    async def _terminate_child(self, child_id: str) -> None:
        child = self._get(child_id)
        await self._stopper.stop(child)
        if self._dynamic or child.spec.restart is Restart.TEMPORARY:
            self._remove(child)

    async def restart_child(self, child_id: str) -> Child:
        """Start a stopped child again from its kept spec."""
        result: Child = await self._request(RestartChild(child_id))
        return result

    async def _restart_child(self, child_id: str) -> Child:
        if self._dynamic:
            raise OperationError(
                "restart_child is not supported by simple_one_for_one supervisors", "simple_one_for_one"
            )
        child = self._get(child_id)
        if child.alive or child.state is State.RESTARTING:
            raise OperationError(f"{child.path}: is {child.state}; terminate it first", _busy(child))
        await self._start_or_fail(child)
        return child

    async def operator_restart(self, child_id: str) -> Child:
        """An operator's restart, in one step of this supervisor: stop the child if it runs (a pending delayed
        restart is dropped), then start it and wait until it is ready; FailedToStartChild when the start fails."""
        result: Child = await self._request(OperatorRestart(child_id))
        return result

    async def _operator_restart(self, child_id: str) -> Child:
        if self._dynamic:
            raise OperationError("a simple_one_for_one child cannot be restarted by path", "simple_one_for_one")
        child = self._get(child_id)
        await self._stopper.stop(child)
        await self._start_or_fail(child)
        return child

    async def delete_child(self, child_id: str) -> None:
        await self._request(DeleteChild(child_id))

    def _delete_child(self, child_id: str) -> None:
        if self._dynamic:
            raise OperationError(
                "delete_child is not supported by simple_one_for_one supervisors", "simple_one_for_one"
            )
        child = self._get(child_id)
        if child.alive or child.state is State.RESTARTING:
            raise OperationError(f"{child.path}: is {child.state}; terminate it before deleting", _busy(child))
        self._remove(child)

    async def reconcile(
        self, specs: list[ChildSpec], replace: set[str], flags: SupervisorFlags | None = None
    ) -> list[tuple[str, str]]:
        """Make the children match ``specs`` (a config reload): start new ones, stop removed ones, restart those
        in ``replace``, and leave every other child untouched (same incarnation, same restart count).

        Returns ``(path, change)`` pairs; a child whose new start fails is reported, the rest still applies.
        """
        result: list[tuple[str, str]] = await self._request(Reconcile(specs, replace, flags))
        return result

    async def _reconcile(
        self, specs: list[ChildSpec], replace: set[str], flags: SupervisorFlags | None
    ) -> list[tuple[str, str]]:
        changes: list[tuple[str, str]] = []
        if flags is not None and flags != self.flags:
            self.flags = flags
            self._window = RestartWindow(flags.intensity, flags.period)
            changes.append((self.path, "flags"))
        p = plan(self._children, specs, replace)
        for old in p.removed:
            await self._stopper.stop(old)
            self._remove(old)
            changes.append((old.path, "removed"))
        order: list[Child] = []
        to_start: list[Child] = []
        for step, found, spec in p.steps:
            c = found if found is not None else Child(spec, self._child_path(spec.id))
            if step is Step.ADD:
                self._by_id[spec.id] = c
                to_start.append(c)
            elif step is Step.REPLACE:
                await self._stopper.stop(c)
                c.restarts, c.last_exit, c.attempt = 0, None, 0
                to_start.append(c)
            elif isinstance(spec, SupervisorSpec) and isinstance(c.handle, Supervisor):
                c.handle.spec = spec  # same settings; a later restart uses the reloaded spec
            c.spec = spec
            if step is not Step.KEEP:
                changes.append((c.path, str(step)))
            order.append(c)
        self._children = order
        for c in to_start:
            try:
                await self._first_start(c)
            except StartFailure as e:
                changes.append((c.path, f"failed to start: {e.reason}"))
        return changes

    async def sync(self) -> None:
        """Return once every message posted before this call (exits, due restarts, requests) is handled."""
        await self._request(Sync())

    def which_children(self) -> list[NodeStatus]:
        """Each child as a status record (one level: a supervisor child's own children are not included)."""
        self._check_open()
        now, wall = self.rt.clock.now(), time.time()
        return [c.status(now, wall) for c in self._children]

    def count_children(self) -> ChildCounts:
        """OTP's counts: a simple_one_for_one supervisor has one spec (its template), however many children."""
        self._check_open()
        supervisors = sum(1 for c in self._children if c.spec.kind == "supervisor")
        return ChildCounts(
            specs=1 if self._dynamic else len(self._children),
            active=sum(1 for c in self._children if c.state is State.RUNNING),
            supervisors=supervisors,
            workers=len(self._children) - supervisors,
        )

    def get_childspec(self, child_id: str) -> ChildSpec:
        self._check_open()
        return self._get(child_id).spec


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _busy(child: Child) -> str:
    return "restarting" if child.state is State.RESTARTING else "running"


def _instantiate(template: ChildSpec, child_id: str, args: tuple[Any, ...]) -> ChildSpec:
    if isinstance(template, WorkerSpec):
        return dataclasses.replace(template, id=child_id, args=args)
    if isinstance(template, ProcessSpec):
        return dataclasses.replace(template, id=child_id, command=(*template.command, *(str(a) for a in args)))
    return dataclasses.replace(template, id=child_id)
