"""State shared by every supervisor of one tree: clock, events, registry, tasks, lookups by path."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from .clock import Clock, LoopClock
from .errors import NoSuchPath, NotRunning
from .events import EventBus
from .mailbox import Mailbox, Registry

if TYPE_CHECKING:
    from .escapes import Escapes
    from .process import Guardian
    from .supervisor import Child, Supervisor


class Runtime:
    def __init__(
        self, *, clock: Clock | None = None, bus: EventBus | None = None, rand: random.Random | None = None
    ) -> None:
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.bus = bus if bus is not None else EventBus()
        self.rand = rand if rand is not None else random.Random()
        self.registry = Registry()
        self.mailboxes: dict[str, Mailbox] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.root: Supervisor | None = None
        self.unstopped: list[str] = []
        self.guardian: Guardian | None = None
        self.escapes: Escapes | None = None  # set when the tree runs as a child subreaper
        self._handle_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.extensions: dict[str, Any] = {}  # shared objects the composition root hands to workers

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def get_guardian(self) -> Guardian:
        if self.guardian is None:
            from .process import Guardian

            self.guardian = Guardian.start()
            if self.escapes is not None:
                self.escapes.exclude.add(self.guardian.pid)
                self.escapes.on_escape = self.guardian.register_pid
                self.escapes.on_gone = self.guardian.unregister_pid
        return self.guardian

    def close(self) -> None:
        if self.guardian is not None:
            self.guardian.close()
            self.guardian = None

    # -- lookups -------------------------------------------------------------------------------------------
    def supervisor_at(self, path: str) -> Supervisor:
        from .supervisor import Supervisor

        sup = self.root
        if sup is None:
            raise NoSuchPath(path, "supervisor")
        for seg in [s for s in path.strip("/").split("/") if s]:
            child = sup.by_id.get(seg)
            if (
                child is None
                or not isinstance(child.handle, Supervisor)
                or child.task is None
                or not child.alive
                or not child.handle.running
            ):
                raise NoSuchPath(path, "running supervisor")
            sup = child.handle
        return sup

    def walk(self) -> Iterator[Child]:
        """Every child record of the tree, depth first, entering running supervisors."""
        from .supervisor import Supervisor

        stack = [self.root] if self.root is not None else []
        while stack:
            sup = stack.pop()
            for child in sup.children:
                yield child
                if isinstance(child.handle, Supervisor) and child.alive:
                    stack.append(child.handle)

    def find(self, path: str) -> Child:
        parent, _, last = path.strip("/").rpartition("/")
        if not last:
            raise NoSuchPath(path)
        sup = self.supervisor_at(parent)
        child = sup.by_id.get(last)
        if child is None:
            raise NoSuchPath(path)
        return child

    def mailbox_of(self, target: str) -> Mailbox:
        mb = self.registry.whereis(target) or self.mailboxes.get(target.strip("/"))
        if mb is None or mb.closed:
            raise NotRunning(f"nothing running as {target!r} (unknown, restarting or without a mailbox)")
        return mb

    async def handle(self, path: str, wait: float = 0.0) -> Any:
        """Ready handle of the child at ``path``; waits up to ``wait`` s while it is not running."""
        from .supervisor import State

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
            self._handle_waiters.setdefault(path, []).append(fut)
            timer = loop.call_later(remaining, _wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
                waiters = self._handle_waiters.get(path)
                if waiters is not None and fut in waiters:
                    waiters.remove(fut)

    def notify_running(self, path: str) -> None:
        waiters = self._handle_waiters.pop(path, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
