"""The supervisor's record of one child across its incarnations, and the view of a supervisor that lookups need."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from . import forensics
from .context import ChildContext
from .events import ExitReason
from .process import OsProcess
from .specs import ChildSpec, SupervisorSpec
from .state import ChildView, CrashLoop, LastExit, NodeStatus, Resources, State


class Node(Protocol):
    """A running supervisor as the rest of the core sees it: its children, by position and by id."""

    path: str

    @property
    def children(self) -> list[Child]: ...

    def child(self, child_id: str) -> Child | None: ...

    @property
    def running(self) -> bool: ...

    @property
    def strategy(self) -> str: ...


class Child:
    """Everything the supervisor knows about one child; written only by that supervisor's task."""

    __slots__ = (
        "attempt", "ctx", "exit_fut", "exits", "gen", "handle", "history", "id", "last_exit", "last_exit_at",
        "loops", "next_restart_at", "path", "pid", "proc", "ready_at", "ready_fut", "restarts", "spawned_at", "spec",
        "started_at", "state", "stop_requested", "sub", "task", "token",
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
        self.sub: Node | None = None  # a supervisor child's running supervisor
        self.ctx: ChildContext[Any] | None = None
        self.proc: OsProcess | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.started_at: float | None = None
        self.last_exit: ExitReason | None = None
        self.last_exit_at: float | None = None  # wall clock
        self.next_restart_at: float | None = None  # clock time
        self.stop_requested = False
        self.token: object | None = None  # a pending delayed restart (the group shares one)
        self.attempt = 0  # restart delays: how many in a row
        self.gen = 0  # incarnation number: late messages about an older one are ignored
        self.spawned_at: float | None = None  # wall clock: this incarnation's start
        self.ready_at: float | None = None  # wall clock: when it became ready
        self.history = forensics.history()  # its last incarnations' exit records, oldest first
        self.exits: dict[str, int] = {}  # ends by cause, over its whole life
        self.loops = forensics.CrashLoops()

    @property
    def alive(self) -> bool:
        return self.exit_fut is not None and not self.exit_fut.done()

    @property
    def running_sub(self) -> Node | None:
        """The supervisor this child runs, while it runs."""
        sub = self.sub
        return sub if sub is not None and self.alive and sub.running else None

    def view(self) -> ChildView:
        return ChildView(self.path, self.spec.kind, self.state, self.handle)

    def status(self, clock_now: float, wall_now: float, escaped: tuple[int, ...] = ()) -> NodeStatus:
        """This child as a typed record (without its own children: the tree adds them)."""
        running = self.state is State.RUNNING
        last = self.last_exit
        cause = self.history[-1].cause if last is not None and self.history else ""
        episode = self.loops.episode
        return NodeStatus(
            id=self.id,
            path=self.path,
            kind=self.spec.kind,
            state=self.state,
            restarts=self.restarts,
            uptime_s=round(clock_now - self.started_at, 3) if running and self.started_at else 0.0,
            last_exit=LastExit(last.kind, last.detail, self.last_exit_at, cause) if last is not None else None,
            pid=self.pid if self.spec.kind == "process" and self.alive else None,
            detached_pids=escaped,
            next_restart_at=(
                round(wall_now + (self.next_restart_at - clock_now), 3)
                if self.state is State.RESTARTING and self.next_restart_at is not None
                else None
            ),
            strategy=str(self.spec.flags.strategy) if isinstance(self.spec, SupervisorSpec) else None,
            resources=self.resources() if self.spec.kind == "process" else None,
            exits=dict(self.exits),
            crash_loop=CrashLoop(episode.since, episode.count, episode.cause, episode.line) if episode else None,
        )

    def resources(self) -> Resources | None:
        """What this OS child uses now (None while it does not run)."""
        proc = self.proc
        if proc is None or not self.alive:
            return None
        u = proc.usage
        return Resources(u.cpu_s, u.rss_bytes, u.peak(), u.fds, u.threads, u.processes, tuple(u.rss_samples))
