"""What a worker receives: its identity, readiness signal, mailbox, and access to the rest of the tree."""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

from .mailbox import DEFAULT_CALL_TIMEOUT, Mailbox, Message

if TYPE_CHECKING:
    from .runtime import Runtime


current_child: contextvars.ContextVar[str | None] = contextvars.ContextVar("mcp_current_child", default=None)
"""The path of the child whose task is running (each child task has its own copy); logs pick it up."""


class ChildContext:
    """Handed to ``WorkerSpec.run``. Call :meth:`started` once the worker is usable ("started means ready")."""

    __slots__ = ("path", "id", "args", "_ready", "_mailbox", "_rt", "_names")

    def __init__(self, path: str, child_id: str, args: tuple[Any, ...], ready: asyncio.Future[Any], rt: Runtime):
        self.path = path
        self.id = child_id
        self.args = args
        self._ready = ready
        self._mailbox: Mailbox | None = None
        self._rt = rt
        self._names: list[str] = []

    def started(self, handle: Any = None) -> None:
        """Report readiness; ``handle`` is what others get from :meth:`Runtime.handle` for this child."""
        if not self._ready.done():
            self._ready.set_result(handle)

    @property
    def mailbox(self) -> Mailbox:
        mb = self._mailbox
        if mb is None:
            mb = self._mailbox = Mailbox(self.path or "root")
            self._rt.mailboxes[self.path] = mb
        return mb

    async def receive(self) -> Message:
        return await self.mailbox.receive()

    def register(self, name: str) -> None:
        """Make this incarnation's mailbox reachable by ``name`` until it exits."""
        self._rt.registry.register(name, self.mailbox)
        self._names.append(name)

    async def call(self, target: str, payload: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Call a registered name or a child path."""
        return await self._rt.mailbox_of(target).call(payload, timeout)

    async def cast(self, target: str, payload: Any) -> None:
        await self._rt.mailbox_of(target).cast(payload)

    async def handle(self, path: str, wait: float = 0.0) -> Any:
        """The ready handle of the child at ``path``, waiting up to ``wait`` seconds while it (re)starts."""
        return await self._rt.handle(path, wait)

    @property
    def runtime(self) -> Runtime:
        return self._rt

    def _close(self, reason: object) -> None:
        mb = self._mailbox
        if mb is not None:
            mb.close(reason)
            if self._rt.mailboxes.get(self.path) is mb:
                del self._rt.mailboxes[self.path]
            for name in self._names:
                self._rt.registry.unregister(name, mb)
