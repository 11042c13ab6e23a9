"""The daemon's side of its isolated subtrees (``isolation = "process"``): one control channel per running subtree
process (the framed protocol of :mod:`.link`).

What a subtree tells arrives here and is made the daemon's own: its events are emitted on the daemon's bus (so
``/events``, ``ctl events``, ``ctl logs``, the alerts and the web page see its children as local ones, under their
paths), its status is spliced into ``/status``. What the daemon is asked about a child inside one (restart, stop,
start, signal), a reload, and calls and casts to targets inside one go to it as requests; calls and casts from its
workers to targets it does not have are answered here (or passed on to another subtree).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..core import NotRunning, OperationError, Tree
from .link import Link, call_over, cast_over, event_of


class Subtrees:
    """The running isolated subtrees of ``tree``, by their supervisors' paths. It is the tree's ``Remote``."""

    def __init__(self, tree: Tree, configured: Callable[[], Iterable[str]]) -> None:
        self.tree = tree
        self._configured = configured  # the isolated supervisors' paths in the running config
        self.links: dict[str, Link] = {}
        self.status: dict[str, dict[str, Any]] = {}  # path -> {"pid", "children"}
        self.names: dict[str, str] = {}  # a name registered inside a subtree -> its path
        self._tasks: set[asyncio.Task[None]] = set()
        tree.connect(self, self.attach)

    # -- channels ---------------------------------------------------------------------------------------------
    def attach(self, path: str, sock: socket.socket) -> None:
        """A subtree's process was spawned with ``sock`` as our end of its channel."""
        task = asyncio.get_running_loop().create_task(self._serve(path, sock), name=f"isolated {path}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, path: str, sock: socket.socket) -> None:
        link = await Link.open(sock, lambda doc: self._request(path, doc), lambda doc: self._message(path, doc))
        old = self.links.get(path)
        if old is not None:
            old.close()
        self.links[path] = link
        try:
            await link.run()
        finally:
            if self.links.get(path) is link:
                del self.links[path]
                self.status.pop(path, None)
                self.names = {n: p for n, p in self.names.items() if p != path}

    async def close(self) -> None:
        for link in list(self.links.values()):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _message(self, path: str, doc: dict[str, Any]) -> None:
        kind = doc.get("t")
        if kind == "event":
            ev = event_of(doc.get("event"))
            if ev is not None and (ev.path == path or ev.path.startswith(path + "/")) and self.tree.bus.active:
                self.tree.bus.emit(ev)  # only under its own supervisor: a subtree cannot speak for others
        elif kind == "status":
            children = doc.get("children")
            if isinstance(children, list):
                self.status[path] = {"pid": doc.get("pid"), "children": children}
            names = doc.get("names")
            if isinstance(names, list):
                self.names = {n: p for n, p in self.names.items() if p != path}
                self.names.update({str(n): path for n in names})

    async def _request(self, path: str, doc: dict[str, Any]) -> Any:
        """A subtree's worker calls or casts to a target its tree does not have: here, or in another subtree."""
        op, target = doc.get("op"), str(doc.get("to", ""))
        owner = self.owner(target)
        if owner is not None and owner[0] == path:  # its own: it has already looked, and it is not running
            raise NotRunning(f"nothing running as {target!r} (unknown, restarting or without a mailbox)")
        if op == "call":
            timeout = doc.get("timeout")
            return await self.tree.call(target, doc.get("msg"), float(timeout) if timeout is not None else None)
        if op == "cast":
            await self.tree.cast(target, doc.get("msg"))
            return None
        raise ValueError(f"unknown request {op!r}")

    # -- routing ------------------------------------------------------------------------------------------------
    def owner(self, target: str) -> tuple[str, str] | None:
        """The subtree a target lives in and its name there, or None: a path under an isolated supervisor's path,
        or a name registered inside one."""
        bare = target.strip("/")
        for path in self.links:
            if bare.startswith(path + "/"):
                return path, bare[len(path) + 1 :]
        named = self.names.get(target)
        return (named, target) if named is not None else None

    def inside(self, path: str) -> tuple[Link, str] | None:
        """The channel of the subtree whose child ``path`` is (strictly below an isolated supervisor), and the
        child's path there; None when ``path`` is not inside one. ``NotRunning`` when that subtree is down."""
        bare = path.strip("/")
        for iso in {*self.links, *self._configured()}:
            if bare.startswith(iso + "/"):
                link = self.links.get(iso)
                if link is None:
                    raise NotRunning(f"{path}: its isolated supervisor {iso} is not running")
                return link, bare[len(iso) + 1 :]
        return None

    # -- core.Remote: the daemon's calls to targets it does not have ------------------------------------------------
    async def call(self, target: str, payload: Any, timeout: float | None) -> Any:
        found = self.owner(target)
        link = self.links.get(found[0]) if found is not None else None
        return await call_over(link, found[1] if found is not None else target, payload, timeout)

    async def cast(self, target: str, payload: Any) -> None:
        found = self.owner(target)
        link = self.links.get(found[0]) if found is not None else None
        await cast_over(link, found[1] if found is not None else target, payload)

    # -- an operator's actions --------------------------------------------------------------------------------
    async def act(self, path: str, action: str, **args: Any) -> dict[str, Any] | None:
        """``restart``, ``stop``, ``start`` or ``signal`` of a child inside an isolated subtree, done there: its
        answer; None when ``path`` is not inside one. Its errors as the tree's own (LookupError, OperationError)."""
        found = self.inside(path)
        if found is None:
            return None
        link, where = found
        value = await link.request({"op": action, "path": where, **args})
        return value if isinstance(value, dict) else {"pid": value}

    async def reload(self, paths: list[str]) -> list[tuple[str, str]]:
        """Each running subtree at ``paths`` re-reads the config and applies its difference: the changes (a subtree
        that could not: ``failed: why``)."""
        changes: list[tuple[str, str]] = []
        for path in paths:
            link = self.links.get(path)
            if link is None:
                continue
            try:
                done = await link.request({"op": "reload"}, timeout=120.0)
            except (OperationError, LookupError, ValueError, TimeoutError, NotRunning) as e:
                changes.append((path, f"failed: {e}"))
                continue
            with contextlib.suppress(TypeError, ValueError):
                changes.extend((str(p), str(c)) for p, c in done)
        return changes

    def views(self) -> Mapping[str, dict[str, Any]]:
        return self.status
