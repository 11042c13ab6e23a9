"""An isolated subtree's process: ``python -m mcp_supervisor.daemon.isolated CONFIG PATH``.

A supervisor with ``isolation = "process"`` is supervised by its parent as one OS child running this module. It
loads the same config file the daemon loaded, takes the subtree at ``PATH`` (the parent's config records it in
``Config.isolated``) and runs it as its own :class:`~mcp_supervisor.core.Tree`, on its own event loop, in its own
interpreter: a worker that blocks the loop, crashes the interpreter or leaks memory takes down this process only,
and the parent restarts it by its restart rules. It prints :data:`~mcp_supervisor.config.children.ISOLATED_READY`
once its tree has started (the parent's readiness), one line per event of its tree (the parent shows them as this
child's output: ``ctl logs PATH``), exits 0 when stopped (SIGTERM: its tree stops within its budget) and 1 when its
tree's root gave up. Launched through the parent's launch chain, it dies with the parent (parent-death signal) and
the parent's guardian takes it, and everything below it, on ``kill -9`` of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..config.children import ISOLATED_READY
from ..core import (
    ChildExited,
    ChildStarted,
    Event,
    FailedToStartChild,
    OperationError,
    ProcessOutput,
    RestartScheduled,
    StartFailed,
    Tree,
    describe,
)
from .builtins import BUILTIN_WORKERS

SHOWN = (ChildStarted, ChildExited, RestartScheduled, StartFailed)
"""The events printed as lines (the parent keeps them in this child's output)."""


def status_file(daemon_pid: int, path: str) -> Path:
    """Where the isolated subtree at ``path`` of the daemon ``daemon_pid`` writes its status (the daemon's
    ``/status`` shows its children from it)."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mcp-supervisor-{os.getuid()}" / "isolated" / f"{daemon_pid}-{digest}.json"


def read_status(daemon_pid: int, path: str) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(status_file(daemon_pid, path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc


def _prefixed(node: dict[str, Any], path: str) -> dict[str, Any]:
    out = dict(node)
    out["path"] = f"{path}/{node['path']}" if node.get("path") else path
    out["children"] = [_prefixed(c, path) for c in node.get("children", [])]
    return out


def _write_status(tree: Tree, path: str) -> None:
    """This process's subtree, its paths under the isolated supervisor's, for the parent (atomic replace)."""
    target = status_file(os.getppid(), path)
    with contextlib.suppress(OSError):
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        doc = _prefixed(tree.status().as_dict(), path)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "children": doc["children"]}), encoding="utf-8")
        os.replace(tmp, target)


def line(path: str, ev: Event) -> str:
    """One event as a line, its path under the isolated supervisor's."""
    where = f"{path}/{ev.path}" if ev.path else path
    extra: dict[str, Any] = {}
    if isinstance(ev, ChildStarted):
        extra = {"pid": ev.pid, "restarts": ev.restarts}
    elif isinstance(ev, ChildExited):
        extra = {"reason": str(ev.reason)}
    elif isinstance(ev, RestartScheduled):
        extra = {"delay_s": round(ev.delay_s, 3)}
    elif isinstance(ev, StartFailed):
        extra = {"reason": str(ev.reason)}
    return " ".join([type(ev).__name__, where, *(f"{k}={v}" for k, v in extra.items() if v is not None)])


class Runner:
    """One isolated subtree: its tree, the lines it prints, the status file it keeps."""

    def __init__(self, tree: Tree, path: str) -> None:
        self.tree, self.path = tree, path
        self.changed = asyncio.Event()
        self.sub = tree.bus.subscribe(maxlen=10_000)

    async def show(self) -> None:
        async for ev in self.sub:
            if isinstance(ev, SHOWN):
                print(line(self.path, ev), flush=True)
                self.changed.set()
            elif isinstance(ev, ProcessOutput):  # its OS children's output, under their paths
                print(f"{self.path}/{ev.path}: {ev.line}", flush=True)

    async def publish(self) -> None:
        """The status, within 0.1 s of a change (a burst of events is one write), else every 2 s."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.changed.wait()
            self.changed.clear()
            with contextlib.suppress(OperationError):  # not started yet, or stopping
                _write_status(self.tree, self.path)
            await asyncio.sleep(0.1)

    async def serve(self, stop: asyncio.Event) -> int:
        """Start the tree, say so, run until stopped (0) or until its root ends (1)."""
        try:
            await self.tree.start()
        except FailedToStartChild as e:
            print(f"isolated {self.path}: its tree failed to start: {describe(e)}", file=sys.stderr, flush=True)
            return 1
        _write_status(self.tree, self.path)  # before the ready line: the parent's /status shows the subtree at once
        print(ISOLATED_READY, flush=True)
        stopped = asyncio.ensure_future(stop.wait())
        ended = asyncio.ensure_future(self.tree.wait())
        await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        code = 0
        if ended.done():
            print(f"isolated {self.path}: its supervisor ended: {ended.result()}", file=sys.stderr, flush=True)
            code = 1
        ended.cancel()
        await self.tree.stop()
        return code


async def run(config: str, path: str) -> int:
    try:
        cfg = load_config(config, workers=BUILTIN_WORKERS)
    except ConfigError as e:
        print(f"isolated {path}: invalid config: {e}", file=sys.stderr, flush=True)
        return 78
    spec = cfg.isolated.get(path)
    if spec is None:
        print(f"isolated {path}: the config no longer has an isolated supervisor at this path", file=sys.stderr)
        return 78
    runner = Runner(Tree(spec, subreaper=True), path)
    tasks = [asyncio.ensure_future(runner.show()), asyncio.ensure_future(runner.publish())]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await runner.serve(stop)
    finally:
        runner.sub.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(OSError):
            status_file(os.getppid(), path).unlink()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mcp_supervisor.daemon.isolated CONFIG PATH", file=sys.stderr)
        return 2
    return asyncio.run(run(argv[0], argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
