"""What every supervisor of one tree shares — clock, events, names, tasks, helpers — and lookups by path.

Lookups walk ``Child`` records and their running supervisors through the :class:`~.child.Node` view, so nothing
here depends on the supervisor itself.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from .cgroups import Cgroups
from .child import Child, Node
from .clock import Clock, LoopClock
from .context import Key
from .errors import NoSuchPath, NotRunning
from .escapes import Escapes
from .events import EventBus
from .forkserver import ForkServer
from .mailbox import Mailbox, Registry, Remote
from .process import Guardian
from .state import ChildView, State


class Runtime:
    """Shared state of one tree. It implements the context's ``Host`` protocol (what workers reach through)."""

    def __init__(
        self, *, clock: Clock | None = None, bus: EventBus | None = None, rand: random.Random | None = None
    ) -> None:
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.bus = bus if bus is not None else EventBus()
        self.rand = rand if rand is not None else random.Random()
        self.registry = Registry()
        self.mailboxes: dict[str, Mailbox] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.root: Node | None = None
        self.unstopped: list[str] = []
        self.guardian: Guardian | None = None
        self.escapes: Escapes | None = None  # set when the tree runs as a child subreaper
        self.cgroups: Cgroups | None = None  # a delegated cgroup v2 subtree: one cgroup per OS child
        self.sockets: dict[str, socket.socket] = {}  # listening sockets the tree holds for its OS children, by name
        self.extensions: dict[Key[Any], Any] = {}  # what the composition root shares with workers
        self.remote: Remote | None = None  # calls and casts to targets not in this tree (Tree.connect)
        self.on_control: Callable[[str, socket.socket], None] | None = None  # an OS child's control socket
        self.forks: ForkServer | None = None  # forks OS children that name a template (Tree.use_fork_server)
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}  # path -> callers of handle() waiting for it

    def now(self) -> float:
        return self.clock.now()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """A task kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.keep(task)
        return task

    def keep(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def get_guardian(self) -> Guardian:
        if self.guardian is None:
            self.guardian = Guardian.start()
            if self.escapes is not None:
                self.escapes.exclude.add(self.guardian.pid)
                self.escapes.on_escape = self.guardian.register_pid
                self.escapes.on_gone = self.guardian.unregister_pid
        return self.guardian

    def close(self) -> None:
        if self.forks is not None:
            self.forks.close()
        if self.guardian is not None:
            self.guardian.close()
            self.guardian = None

    # -- lookups -------------------------------------------------------------------------------------------
    def supervisor_at(self, path: str) -> Node:
        """The running supervisor at ``path`` ("" is the root); NoSuchPath when there is none."""
        sup = self.root
        if sup is None:
            raise NoSuchPath(path, "supervisor")
        for seg in [s for s in path.strip("/").split("/") if s]:
            child = sup.child(seg)
            sub = child.running_sub if child is not None else None
            if sub is None:
                raise NoSuchPath(path, "running supervisor")
            sup = sub
        return sup

    def walk(self) -> Iterator[Child]:
        """Every child record of the tree, depth first, entering running supervisors."""
        stack = [self.root] if self.root is not None else []
        while stack:
            sup = stack.pop()
            for child in sup.children:
                yield child
                sub = child.running_sub
                if sub is not None:
                    stack.append(sub)

    def views(self) -> Iterator[ChildView]:
        return (c.view() for c in self.walk())

    def find(self, path: str) -> Child:
        parent, _, last = path.strip("/").rpartition("/")
        if not last:
            raise NoSuchPath(path)
        sup = self.supervisor_at(parent)
        child = sup.child(last)
        if child is None:
            raise NoSuchPath(path, siblings=[c.id for c in sup.children])
        return child

    # -- handles of running children -----------------------------------------------------------------------
    async def handle(self, path: str, wait: float = 0.0) -> Any:
        """Ready handle of the child at ``path``; waits up to ``wait`` s while it is not running."""
        path = path.strip("/")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            try:
                child = self.find(path)
                if child.state is State.RUNNING:
                    return child.handle
                state = str(child.state)
            except NoSuchPath:
                state = "absent"
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotRunning(f"{path!r} is not running ({state}); waited {wait:g}s")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiting.setdefault(path, []).append(fut)
            timer = loop.call_later(remaining, _wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
                waiters = self._waiting.get(path)
                if waiters is not None and fut in waiters:
                    waiters.remove(fut)

    def notify_running(self, path: str) -> None:
        """The child at ``path`` is running (again): wake the handle() calls waiting for it."""
        if not self._waiting:
            return
        for fut in self._waiting.pop(path, ()):
            if not fut.done():
                fut.set_result(None)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
