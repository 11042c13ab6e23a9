"""What a worker receives: its identity, readiness signal, mailbox, and typed access to the rest of the tree.

The worker contract (docs/workers.md) in brief: call :meth:`ChildContext.started` once usable; when stopped you are
cancelled, and your cleanup should end by :meth:`ChildContext.cleanup_deadline`; returning is a *normal* exit,
raising :class:`~mcp_supervisor.core.Shutdown` a *shutdown* exit, anything else *abnormal*.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar, overload

from .events import Event, EventBus, Subscription
from .mailbox import DEFAULT_CALL_TIMEOUT, Mailbox, Message, Registry, Remote, call_in, cast_in
from .state import ChildView

T = TypeVar("T")

current_child: contextvars.ContextVar[str | None] = contextvars.ContextVar("mcp_current_child", default=None)
"""The path of the child whose task is running (each child task has its own copy); logs pick it up."""


class Key(Generic[T]):
    """A typed name for something the composition root shares with workers (``ctx.extension(KEY)``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Key({self.name!r})"


class Host(Protocol):
    """What a context needs from the tree it lives in (the runtime provides it)."""

    bus: EventBus
    registry: Registry
    mailboxes: dict[str, Mailbox]
    extensions: dict[Key[Any], Any]
    remote: Remote | None  # where calls to targets not in this tree go (an isolated subtree's other side)

    def now(self) -> float: ...

    async def handle(self, path: str, wait: float = 0.0) -> Any: ...

    def views(self) -> Iterator[ChildView]: ...


H = TypeVar("H")


class ChildContext(Generic[H]):
    """Handed to a worker's ``run(ctx)``. Call :meth:`started` once the worker is usable ("started means ready").

    Generic in the handle the worker hands out (anyio's ``TaskStatus``): a worker typed ``ChildContext[Cache]``
    must pass a ``Cache`` to ``started``; one typed ``ChildContext[None]`` calls ``started()`` with nothing."""

    __slots__ = (
        "_host",
        "_mailbox",
        "_names",
        "_ready",
        "_stop_deadline",
        "args",
        "fencing_token",
        "id",
        "path",
        "shutdown_s",
    )

    def __init__(
        self,
        path: str,
        child_id: str,
        args: tuple[Any, ...],
        ready: asyncio.Future[Any],
        host: Host,
        *,
        shutdown_s: float | None = None,
        fencing_token: int | None = None,
    ) -> None:
        self.path = path
        self.fencing_token = fencing_token
        """The fleet lease's token when this child runs as a singleton (None otherwise): guard writes with it."""
        self.id = child_id
        self.args = args
        self.shutdown_s = shutdown_s
        """Seconds the supervisor waits after asking this child to stop (None: forever); see cleanup_deadline()."""
        self._ready = ready
        self._mailbox: Mailbox | None = None
        self._host = host
        self._names: list[str] = []
        self._stop_deadline: float | None = None

    # -- readiness and the supervisor's side ------------------------------------------------------------------
    @overload
    def started(self: ChildContext[None]) -> None: ...

    @overload
    def started(self, handle: H) -> None: ...

    def started(self, handle: Any = None) -> None:
        """Report readiness; ``handle`` is what others get from :func:`service` / :meth:`handle` for this child."""
        if not self._ready.done():
            self._ready.set_result(handle)

    def stop_requested(self) -> None:
        """Called by the supervisor when it asks this incarnation to stop: starts the cleanup clock."""
        if self.shutdown_s is not None:
            self._stop_deadline = self._host.now() + self.shutdown_s

    def cleanup_deadline(self) -> float | None:
        """When the supervisor stops waiting for this incarnation to finish, on the core's clock.

        None while no stop was requested, or when the child's ``shutdown`` is ``infinity``. A worker that closes
        pools or flushes buffers in its ``finally`` bounds that work by it (see :meth:`cleanup_time_left`).
        """
        return self._stop_deadline

    def cleanup_time_left(self, fallback: float) -> float:
        """Seconds left until :meth:`cleanup_deadline` (never negative), or ``fallback`` when there is none."""
        if self._stop_deadline is None:
            return fallback
        return max(0.0, self._stop_deadline - self._host.now())

    def end(self, reason: object) -> None:
        """Called by the supervisor when this incarnation has ended: its mailbox and names go."""
        mb = self._mailbox
        if mb is not None:
            mb.close(reason)
            if self._host.mailboxes.get(self.path) is mb:
                del self._host.mailboxes[self.path]
            for name in self._names:
                self._host.registry.unregister(name, mb)

    # -- messages --------------------------------------------------------------------------------------------
    @property
    def mailbox(self) -> Mailbox:
        mb = self._mailbox
        if mb is None:
            mb = self._mailbox = Mailbox(self.path or "root")
            self._host.mailboxes[self.path] = mb
        return mb

    async def receive(self) -> Message:
        return await self.mailbox.receive()

    def register(self, name: str) -> None:
        """Make this incarnation's mailbox reachable by ``name`` until it exits."""
        self._host.registry.register(name, self.mailbox)
        self._names.append(name)

    async def call(self, target: str, payload: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Call a registered name or a child path — in this tree, or across an isolated subtree's boundary (JSON
        messages there)."""
        host = self._host
        return await call_in(host.registry, host.mailboxes, host.remote, target, payload, timeout)

    async def cast(self, target: str, payload: Any) -> None:
        host = self._host
        await cast_in(host.registry, host.mailboxes, host.remote, target, payload)

    # -- the rest of the tree --------------------------------------------------------------------------------
    async def handle(self, path: str, wait: float = 0.0) -> Any:
        """The ready handle of the child at ``path``, waiting up to ``wait`` seconds while it (re)starts.

        Prefer :func:`mcp_supervisor.services.base.service`, which types it and follows restarts.
        """
        return await self._host.handle(path, wait)

    def emit(self, event: Event) -> None:
        """Publish an event on the tree's bus (a no-op when nobody listens)."""
        bus = self._host.bus
        if bus.active:
            bus.emit(event)

    @property
    def listened(self) -> bool:
        """True when someone subscribes to events: build expensive events only then."""
        return self._host.bus.active

    def subscribe(self, maxlen: int = 10_000) -> Subscription:
        """Every event of the tree from now on, in a bounded queue (close it when done)."""
        return self._host.bus.subscribe(maxlen)

    def extension(self, key: Key[T]) -> T | None:
        """What the composition root shared under ``key``, or None."""
        value: T | None = self._host.extensions.get(key)
        return value

    def provide(self, key: Key[T], value: T) -> T:
        """Share ``value`` under ``key`` unless something already is; returns what is shared."""
        found: T = self._host.extensions.setdefault(key, value)
        return found

    def views(self) -> Iterator[ChildView]:
        """Every child of the tree, depth first (supervisors' children under them)."""
        return self._host.views()
