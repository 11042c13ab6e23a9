"""A running supervision tree: the root supervisor, its runtime, and operations addressed by path."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from .cgroups import Cgroups
from .child import Child
from .clock import Clock, wait_done
from .context import ChildContext, Key
from .errors import FailedToStartChild, OperationError, Shutdown, describe
from .escapes import Escapes, become_subreaper
from .events import BusStatistics, EscapeeKilled, EventBus, ExitReason, SpecWarning
from .forensics import Episode, ExitRecord, diagnose
from .forkserver import ForkServer
from .loopwatch import Blocked, LoopWatch
from .mailbox import DEFAULT_CALL_TIMEOUT, Mailbox, Remote, call_in, cast_in, mailbox_of
from .runtime import Runtime
from .specs import ChildSpec, ProcessSpec, SupervisorSpec
from .state import ChildCounts, NodeStatus, State
from .supervisor import Supervisor

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """What did not stop within its shutdown time (in-process children cannot be force-killed)."""

    unstopped: tuple[str, ...] = ()
    duration_s: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.unstopped


@dataclass(slots=True)
class _Root:
    task: asyncio.Task[Any] | None = None
    exit_fut: asyncio.Future[ExitReason] | None = None
    stopping: bool = False
    started_at: float = 0.0


class Tree:
    """Runs a root :class:`SupervisorSpec`.

    ``await tree.start()`` returns once every child is ready (or raises :class:`FailedToStartChild`);
    ``await tree.wait()`` returns the root's exit reason when it stops by itself (intensity exceeded,
    auto_shutdown); ``await tree.stop()`` stops everything in reverse order and reports what did not stop.
    """

    def __init__(
        self,
        spec: SupervisorSpec,
        *,
        clock: Clock | None = None,
        bus: EventBus | None = None,
        rand: random.Random | None = None,
        subreaper: bool = False,
    ) -> None:
        """``subreaper``: make this process a child subreaper and stop OS children's escaped descendants with them
        (``core.escapes``); for a daemon that owns its process, not for a library inside someone else's."""
        if not isinstance(spec, SupervisorSpec):
            raise TypeError(f"Tree needs a SupervisorSpec, got {type(spec).__name__}")
        self.spec = spec
        self.rt = Runtime(clock=clock, bus=bus, rand=rand)
        self.loopwatch: LoopWatch | None = None
        self._root = _Root()
        self._sup: Supervisor | None = None
        self._subreaper = subreaper

    @property
    def bus(self) -> EventBus:
        return self.rt.bus

    @property
    def root(self) -> Supervisor:
        if self._sup is None:
            raise OperationError("the tree is not started")
        return self._sup

    # -- life ----------------------------------------------------------------------------------------------
    async def start(self) -> None:  # noqa: C901 - the start sequence with its unwinding at each step (a failed start leaves nothing)
        if self._root.task is not None:
            raise OperationError("the tree is already started")
        rt = self.rt
        loop = asyncio.get_running_loop()
        for msg in _all_warnings(self.spec):
            rt.bus.emit(SpecWarning(path="", message=msg))
        if self._subreaper and become_subreaper():

            def killed(path: str, pid: int) -> None:
                if rt.bus.active:
                    rt.bus.emit(EscapeeKilled(path=path, pid=pid))

            rt.escapes = Escapes(on_kill=killed)
            rt.escapes.start()
        sup = Supervisor(self.spec, "", rt)
        self._sup = sup
        rt.root = sup
        ready: asyncio.Future[Any] = loop.create_future()
        exit_fut: asyncio.Future[ExitReason] = loop.create_future()
        ctx = ChildContext[Any]("", self.spec.id, (), ready, rt)

        async def main() -> None:
            try:
                await sup.run(ctx)
                reason = ExitReason("normal")
            except FailedToStartChild as e:
                if not ready.done():
                    ready.set_exception(e)
                reason = ExitReason("abnormal", str(e))
            except asyncio.CancelledError:
                reason = ExitReason("shutdown")
                if not self._root.stopping:
                    exit_fut.set_result(reason)
                    raise
            except Shutdown as e:  # gave up (intensity) or auto_shutdown
                reason = ExitReason("shutdown", e.reason)
            except Exception as e:  # noqa: BLE001 - reported as the root's exit reason
                reason = ExitReason("abnormal", describe(e))
            if not ready.done():
                ready.set_exception(OperationError(f"root exited before it was ready: {reason}"))
            if not exit_fut.done():
                exit_fut.set_result(reason)

        self._root.task = rt.spawn(main(), name="root")
        self._root.exit_fut = exit_fut
        self._root.started_at = rt.clock.now()
        try:
            await ready
        except BaseException:
            self._root.task.cancel()
            await asyncio.wait((exit_fut,))
            rt.close()
            raise

    async def wait(self) -> ExitReason:
        """Wait until the root supervisor exits; returns why."""
        if self._root.exit_fut is None:
            raise OperationError("the tree is not started")
        return await asyncio.shield(self._root.exit_fut)

    @property
    def done(self) -> bool:
        return self._root.exit_fut is not None and self._root.exit_fut.done()

    async def stop(self) -> ShutdownReport:
        """Stop the whole tree in reverse start order, each child within its shutdown spec."""
        root = self._root
        began = time.monotonic()
        if root.task is not None and root.exit_fut is not None:
            if not root.exit_fut.done():
                root.stopping = True
                root.task.cancel()
                await wait_done(self.rt.clock, root.exit_fut, None)
        if self.rt.escapes is not None:
            await self.rt.escapes.stop()
        if self.loopwatch is not None:
            self.loopwatch.stop()
        self.rt.close()
        return ShutdownReport(tuple(self.rt.unstopped), time.monotonic() - began)

    async def __aenter__(self) -> Tree:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- runtime operations by path ------------------------------------------------------------------------
    def supervisor(self, path: str = "") -> Supervisor:
        """The running supervisor at ``path`` ("" is the root); NoSuchPath when there is none."""
        sup = self.rt.supervisor_at(path)
        assert isinstance(sup, Supervisor)
        return sup

    def child(self, path: str) -> Child:
        return self.rt.find(path)

    def exits(self, path: str) -> tuple[list[ExitRecord], Episode | None, str]:
        """The child's exit history (oldest first), its crash-loop episode, and a one-line diagnosis."""
        child = self.child(path)
        records = list(child.history)
        max_memory = child.spec.max_memory if isinstance(child.spec, ProcessSpec) else None
        return records, child.loops.episode, diagnose(records, child.loops.episode, max_memory, time.time())

    def watch_loop(self, threshold: float = 0.25) -> LoopWatch:
        """Start noticing who blocks the event loop for longer than ``threshold`` seconds (``LoopBlocked`` events);
        stopped with the tree."""
        if self.loopwatch is None:
            self.loopwatch = LoopWatch(self.bus, self._is_path, threshold)
            self.loopwatch.start()
        return self.loopwatch

    def _is_path(self, name: str) -> bool:
        try:
            self.child(name)
        except Exception:  # noqa: BLE001 - called from the watchdog thread: any doubt is "not a child"
            return False
        return True

    def loop_blocked(self, path: str) -> Blocked | None:
        """How often the child at ``path`` blocked the event loop, and where the last time (None: never, or no
        watch)."""
        return self.loopwatch.by_path.get(path) if self.loopwatch is not None else None

    def walk(self) -> Iterator[Child]:
        """Every child of the running tree, depth first (a running supervisor's children after it)."""
        return self.rt.walk()

    async def start_child(self, sup_path: str, spec_or_args: ChildSpec | tuple[Any, ...] | list[Any]) -> str:
        child = await self.supervisor(sup_path).start_child(spec_or_args)
        return child.path

    async def terminate_child(self, path: str) -> None:
        parent, child_id = _split(path)
        await self.supervisor(parent).terminate_child(child_id)

    async def restart_child(self, path: str) -> None:
        parent, child_id = _split(path)
        await self.supervisor(parent).restart_child(child_id)

    async def restart(self, path: str) -> None:
        """Stop the child at ``path`` if it runs, then start it again and wait until it is ready (an operator's
        restart, done by its supervisor in one step so that nothing happens in between); FailedToStartChild when
        the new one fails."""
        parent, child_id = _split(path)
        await self.supervisor(parent).operator_restart(child_id)

    def signal(self, path: str, sig: int, group: bool = False) -> int:
        """Send ``sig`` to the OS child at ``path`` (its process; ``group``: its whole process group), as
        supervisorctl's ``signal`` does; its pid. A death it causes is the child's own exit (abnormal: the supervisor
        did not ask for it). OperationError when it is not a running OS process."""
        child = self.child(path)
        proc = child.proc
        if proc is None or not child.alive or proc.exited.done():
            raise OperationError(f"{child.path}: not a running OS process ({child.spec.kind}, {child.state})")
        proc.send(sig, group)
        return proc.pid

    async def delete_child(self, path: str) -> None:
        parent, child_id = _split(path)
        await self.supervisor(parent).delete_child(child_id)

    def which_children(self, sup_path: str = "") -> list[NodeStatus]:
        return self.supervisor(sup_path).which_children()

    def count_children(self, sup_path: str = "") -> ChildCounts:
        return self.supervisor(sup_path).count_children()

    def get_childspec(self, path: str) -> ChildSpec:
        parent, child_id = _split(path)
        return self.supervisor(parent).get_childspec(child_id)

    # -- messages and shared objects -------------------------------------------------------------------------
    def mailbox(self, target: str) -> Mailbox:
        """The live mailbox of a registered name or a child path; NotRunning when there is none."""
        return mailbox_of(self.rt.registry, self.rt.mailboxes, target)

    async def call(self, target: str, payload: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        rt = self.rt
        return await call_in(rt.registry, rt.mailboxes, rt.remote, target, payload, timeout)

    async def cast(self, target: str, payload: Any) -> None:
        rt = self.rt
        await cast_in(rt.registry, rt.mailboxes, rt.remote, target, payload)

    def use_fork_server(self) -> ForkServer:
        """Fork the OS children that name a template (``ProcessSpec.template``) from a fork server, started on first
        use (or by ``await forks.start(preload)``), instead of exec'ing their command; stopped with the tree."""
        if self.rt.forks is None:
            self.rt.forks = ForkServer()
        return self.rt.forks

    def connect(self, remote: Remote | None, on_control: Callable[[str, socket.socket], None] | None) -> None:
        """Another process's tree: ``remote`` takes the calls and casts to targets this tree does not have;
        ``on_control`` is given the control socket of each OS child that asked for one (``ProcessSpec.control``),
        as it spawns (else the socket is closed)."""
        self.rt.remote = remote
        self.rt.on_control = on_control

    async def handle(self, path: str, wait: float = 0.0) -> Any:
        return await self.rt.handle(path, wait)

    def use_cgroups(self, cgroups: Cgroups | None) -> None:
        """Give each OS child its own cgroup in ``cgroups`` (a delegated subtree: ``Cgroups.detect()``)."""
        self.rt.cgroups = cgroups

    @property
    def isolation(self) -> str:
        """How OS children are contained and stopped: ``cgroup`` or ``process-group``."""
        return "cgroup" if self.rt.cgroups is not None else "process-group"

    def hold_socket(self, name: str, sock: socket.socket) -> None:
        """Hold a listening socket for OS children that list ``name`` in ``sockets`` (passed by systemd's
        socket-activation protocol). The caller keeps owning it: it stays open across the children's restarts."""
        self.rt.sockets[name] = sock

    def provide(self, key: Key[T], value: T) -> None:
        """Share ``value`` with every worker under ``key`` (``ctx.extension(key)``); before start, typically."""
        self.rt.extensions[key] = value

    # -- views ---------------------------------------------------------------------------------------------
    def status(self) -> NodeStatus:
        """The tree as a typed record (``.as_dict()`` is the admin port's ``/status`` document)."""
        clock_now = self.rt.clock.now()
        wall_now = time.time()
        escapes = self.rt.escapes
        root_state = State.STOPPED
        if self._root.task is not None and not self.done:
            root_state = State.STOPPING if self._root.stopping else State.RUNNING

        def node(c: Child) -> NodeStatus:
            escaped = tuple(escapes.of(c.pid)) if escapes is not None and c.alive and c.pid is not None else ()
            st = c.status(clock_now, wall_now, escaped)
            sub = c.running_sub
            if sub is None:
                return st
            return dataclasses.replace(st, children=tuple(node(g) for g in sub.children))

        return NodeStatus(
            id=self.spec.id,
            path="",
            kind="supervisor",
            state=root_state,
            uptime_s=round(clock_now - self._root.started_at, 3) if root_state is State.RUNNING else 0.0,
            strategy=str(self.spec.flags.strategy),
            children=tuple(node(c) for c in self._sup.children) if self._sup is not None else (),
        )

    def statistics(self) -> BusStatistics:
        return self.rt.bus.statistics()


def _split(path: str) -> tuple[str, str]:
    parent, _, child_id = path.strip("/").rpartition("/")
    if not child_id:
        raise OperationError(f"path {path!r} does not name a child")
    return parent, child_id


def _all_warnings(spec: SupervisorSpec) -> list[str]:
    out = spec.warnings()
    for child in spec.children:
        if isinstance(child, SupervisorSpec):
            out += _all_warnings(child)
    return out
