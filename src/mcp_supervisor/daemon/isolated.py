"""An isolated subtree's process: ``python -m mcp_supervisor.daemon.isolated CONFIG PATH``.

A supervisor with ``isolation = "process"`` is supervised by its parent as one OS child running this module. It
loads the same config file the daemon loaded, takes the subtree at ``PATH`` (the parent's config records it in
``Config.isolated``) and runs it as its own :class:`~mcp_supervisor.core.Tree`, on its own event loop, in its own
interpreter: a worker that blocks the loop, crashes the interpreter or leaks memory takes down this process only,
and the parent restarts it by its restart rules. It prints :data:`~mcp_supervisor.config.children.ISOLATED_READY`
once its tree has started (the parent's readiness), exits 0 when stopped (SIGTERM: its tree stops within its
budget) and, when its tree's root ended by itself, with a code the parent reads back as that end
(:data:`~mcp_supervisor.config.children.ISOLATED_EXITS`: it gave up, as an in-process supervisor would; 1:
abnormal). Forked from the fork server (or exec'd through the parent's launch chain), it dies with the parent
(parent-death signal) and the parent's guardian takes it, and everything below it, on ``kill -9`` of the daemon.

Over its control channel (fd ``$MCP_CONTROL_FD``, the framed protocol of :mod:`.link`) it tells the daemon its
tree's events and status (the daemon shows its children as its own: ``/status``, ``/events``, ``ctl logs``) and
answers the daemon's requests: an operator's restart, stop, start or signal of a child inside, a reload (applied by
difference), and calls and casts to its workers; its workers' calls and casts to targets it does not have go to the
daemon. Run by hand (no channel), it prints its events as lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 - asyncio's default executor, imported once by the fork server
import contextlib
import os
import signal
import socket
import sys
from typing import Any

from ..config import Config, ConfigError, load_config
from ..config.children import ISOLATED_EXITS, ISOLATED_READY
from ..core import (
    ChildExited,
    ChildStarted,
    Event,
    ExitReason,
    FailedToStartChild,
    LoopBlocked,
    OperationError,
    ProcessOutput,
    RestartScheduled,
    StartFailed,
    Tree,
    describe,
)
from .builtins import BUILTIN_WORKERS
from .link import Link, call_over, cast_over, event_doc
from .reload import apply_difference

try:  # imported here, once, by the fork server (not at each start of a forked subtree: 4 ms)
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]

try:
    import setproctitle
except ImportError:  # pragma: no cover - a dependency; without it ps shows the fork server's command line
    setproctitle = None  # type: ignore[assignment]

CHANGES = (ChildStarted, ChildExited, RestartScheduled, StartFailed)
"""The events after which the daemon is sent the status again (and, run by hand, that are printed)."""


def prefixed(node: dict[str, Any], path: str) -> dict[str, Any]:
    """A status node of this process's tree, its paths (and its children's) under the isolated supervisor's."""
    out = dict(node)
    out["path"] = f"{path}/{node['path']}" if node.get("path") else path
    out["children"] = [prefixed(c, path) for c in node.get("children", [])]
    return out


def line(path: str, ev: Event) -> str:
    """One event as a line, its path under the isolated supervisor's (run by hand, without a control channel)."""
    where = f"{path}/{ev.path}" if ev.path else path
    extra: dict[str, Any] = {}
    if isinstance(ev, ChildStarted):
        extra = {"pid": ev.pid, "restarts": ev.restarts}
    elif isinstance(ev, ChildExited | StartFailed):
        extra = {"reason": str(ev.reason)}
    elif isinstance(ev, RestartScheduled):
        extra = {"delay_s": round(ev.delay_s, 3)}
    return " ".join([type(ev).__name__, where, *(f"{k}={v}" for k, v in extra.items() if v is not None)])


class Runner:
    """One isolated subtree: its tree, and its side of the control channel (``link``; None when run by hand)."""

    def __init__(self, cfg: Config, tree: Tree, path: str) -> None:
        self.cfg, self.tree, self.path = cfg, tree, path
        self.link: Link | None = None
        self.changed = asyncio.Event()
        self.sub = tree.bus.subscribe(maxlen=10_000)
        tree.connect(self, None)  # its workers' calls to targets it does not have go to the daemon

    # -- what the daemon is told ------------------------------------------------------------------------------
    async def show(self) -> None:
        async for ev in self.sub:
            self.forward(ev)

    def forward(self, ev: Event) -> None:
        if isinstance(ev, CHANGES):
            self.changed.set()
        if self.link is not None:
            doc = event_doc(ev, self.path)
            if doc is not None:
                self.link.send({"t": "event", "event": doc}, droppable=True)
        elif isinstance(ev, CHANGES | LoopBlocked):
            print(line(self.path, ev), flush=True)
        elif isinstance(ev, ProcessOutput):
            print(f"{self.path}/{ev.path}: {ev.line}", flush=True)

    def status(self) -> dict[str, Any]:
        doc = prefixed(self.tree.status().as_dict(), self.path)
        return {"t": "status", "pid": os.getpid(), "children": doc["children"], "names": self.tree.rt.registry.names()}

    async def publish(self) -> None:
        """The status, within 0.1 s of a change (a burst of events is one frame), else every 2 s."""
        while self.link is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.changed.wait()
            self.changed.clear()
            with contextlib.suppress(OperationError):  # not started yet, or stopping
                self.link.send(self.status())
            await asyncio.sleep(0.1)

    # -- what the daemon asks -----------------------------------------------------------------------------------
    def inner(self, target: str) -> str:
        """A path as the daemon names it (``iso/a``) as this tree names it (``a``); a registered name as it is."""
        bare = target.strip("/")
        return bare[len(self.path) + 1 :] if bare.startswith(self.path + "/") else target

    def _node(self, inner: str) -> dict[str, Any] | None:
        parent = inner.rpartition("/")[0]
        node = next((c for c in self.tree.which_children(parent) if c.path == inner), None)
        return prefixed(node.as_dict(), self.path) if node is not None else None

    async def request(self, doc: dict[str, Any]) -> Any:
        op = doc.get("op")
        if op == "call":  # from the daemon: to this tree's own mailboxes only (never back across)
            timeout = doc.get("timeout")
            return await self.tree.mailbox(self.inner(str(doc["to"]))).call(doc.get("msg"), timeout)
        if op == "cast":
            await self.tree.mailbox(self.inner(str(doc["to"]))).cast(doc.get("msg"))
            return None
        if op == "reload":
            return await self.reload()
        where = self.inner(str(doc.get("path", "")))
        if op == "exits":  # ctl why
            records, episode, diagnosis = self.tree.exits(where)
            blocked = self.tree.loop_blocked(where)
            return {"diagnosis": diagnosis, "crash_loop": episode.as_dict() if episode is not None else None,
                    "exits": [r.as_dict() for r in records],
                    "loop_blocked": blocked.as_dict() if blocked is not None else None}  # fmt: skip
        if op == "signal":
            return self.tree.signal(where, int(doc["signal"]), bool(doc.get("group", False)))
        before = self.tree.child(where)
        previous = before.pid if before.alive else None
        if op == "stop":
            await self.tree.terminate_child(where)
        elif op == "start":
            await self.tree.restart_child(where)
        elif op == "restart":
            await self.tree.restart(where)
        else:
            raise ValueError(f"unknown request {op!r}")
        return {"previous_pid": previous, "child": self._node(where)}

    async def reload(self) -> list[list[str]]:
        """Re-read the config and apply the difference to this subtree (its children added, removed, restarted,
        untouched); the changes, their paths under the isolated supervisor's."""
        try:
            new = load_config(self.cfg.file, workers=BUILTIN_WORKERS)
        except ConfigError as e:
            raise ValueError(f"invalid config: {e}") from None
        if self.path not in new.isolated:
            raise LookupError(f"the config no longer has an isolated supervisor at {self.path}")
        changes = await apply_difference(self.tree, self.cfg.subtree(self.path), new.subtree(self.path))
        self.cfg = new
        self.changed.set()
        return [[f"{self.path}/{p}" if p else self.path, change] for p, change in changes]

    # -- its workers' calls across the boundary (core.Remote) -----------------------------------------------------
    async def call(self, target: str, payload: Any, timeout: float | None) -> Any:
        return await call_over(self.link, target, payload, timeout)

    async def cast(self, target: str, payload: Any) -> None:
        await cast_over(self.link, target, payload)

    # -- life -----------------------------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> int:
        """Start the tree, say so, run until stopped (0) or until its root ends (1)."""
        try:
            await self.tree.start()
        except FailedToStartChild as e:
            print(f"isolated {self.path}: its tree failed to start: {describe(e)}", file=sys.stderr, flush=True)
            return 1
        self.tree.watch_loop()  # a worker that blocks this process's loop is named (LoopBlocked), here too
        if self.link is not None:  # before the ready line: the daemon's /status shows the subtree at once
            self.link.send(self.status())
        print(ISOLATED_READY, flush=True)
        stopped = asyncio.ensure_future(stop.wait())
        ended = asyncio.ensure_future(self.tree.wait())
        await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        code = 0
        if ended.done():
            reason = ended.result()
            print(f"isolated {self.path}: its supervisor ended: {reason}", file=sys.stderr, flush=True)
            code = exit_code(reason)
        ended.cancel()
        await self.tree.stop()
        return code


def exit_code(reason: ExitReason) -> int:
    """This process's exit code for its supervisor's end: what the parent reads back as the same reason (an
    in-process supervisor's), by :data:`~mcp_supervisor.config.children.ISOLATED_EXITS`; 1 for anything abnormal."""
    if reason.kind == "normal":
        return 0
    if reason.kind == "shutdown":
        return next((c for c, (_, detail) in ISOLATED_EXITS.items() if detail == reason.detail), 5)
    return 1


def _control() -> socket.socket | None:
    """This process's end of the control channel the daemon gave it, or None (run by hand)."""
    fd = os.environ.pop("MCP_CONTROL_FD", "")
    if not fd.isdigit():
        return None
    sock = socket.socket(fileno=int(fd))
    sock.set_inheritable(False)  # its own OS children never get it
    return sock


_PREPARED: dict[str, Config] = {}
"""The config the daemon last (re)loaded, parsed by the fork server (:func:`prepare`): what a forked subtree runs."""


def prepare(args: list[str]) -> None:
    """In the fork server (which it names for ``ps``), each time the daemon has (re)loaded its config (``args``: the
    config file): parse it and import the workers it names, once, so that a forked subtree starts without either —
    and runs the config the daemon runs, not the file as it may be by then. A file that no longer parses leaves
    nothing prepared."""
    if setproctitle is not None:  # (set here first, in the server: its forked children can retitle themselves)
        setproctitle.setproctitle("mcp-supervisor fork server")
    _PREPARED.clear()
    _PREPARED[os.path.abspath(args[0])] = load_config(args[0], workers=BUILTIN_WORKERS)


async def run(config: str, path: str) -> int:
    cfg = _PREPARED.get(config)  # (an absolute path: the command's)
    if cfg is None:  # exec'd, or forked before the daemon's config was prepared: parse it here
        try:
            cfg = load_config(config, workers=BUILTIN_WORKERS)
        except ConfigError as e:
            print(f"isolated {path}: invalid config: {e}", file=sys.stderr, flush=True)
            return 78
    spec = cfg.isolated.get(path)
    if spec is None:
        print(f"isolated {path}: the config no longer has an isolated supervisor at this path", file=sys.stderr)
        return 78
    return await run_runner(Runner(cfg, Tree(spec, subreaper=True), path))


async def run_runner(runner: Runner) -> int:
    """Run ``runner``'s tree until stopped (SIGTERM, SIGINT) or until its root ends, talking over the control
    channel when this process has one; its exit code."""
    tasks = [asyncio.ensure_future(runner.show())]
    control = _control()
    if control is not None:
        runner.link = await Link.open(control, runner.request, lambda doc: None)
        tasks += [asyncio.ensure_future(runner.link.run()), asyncio.ensure_future(runner.publish())]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await runner.serve(stop)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while (ev := runner.sub.get_nowait()) is not None:  # its tree's last events (its stop) go out too
            runner.forward(ev)
        runner.sub.close()
        if runner.link is not None:
            await runner.link.aclose()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mcp_supervisor.daemon.isolated CONFIG PATH", file=sys.stderr)
        return 2
    if setproctitle is not None:  # what ps shows (forked, it would show the fork server's command line)
        setproctitle.setproctitle(f"mcp-supervisor {argv[1]}: isolated subtree of {argv[0]}")
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run(argv[0], argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
