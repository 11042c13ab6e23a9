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
import signal
import sys
from typing import Any

from ..config import ConfigError, load_config
from ..config.children import ISOLATED_READY
from ..core import (
    ChildExited,
    ChildStarted,
    Event,
    FailedToStartChild,
    ProcessOutput,
    RestartScheduled,
    StartFailed,
    Tree,
    describe,
)
from .builtins import BUILTIN_WORKERS

SHOWN = (ChildStarted, ChildExited, RestartScheduled, StartFailed)
"""The events printed as lines (the parent keeps them in this child's output)."""


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
    tree = Tree(spec, subreaper=True)
    sub = tree.bus.subscribe(maxlen=10_000)

    async def show() -> None:
        async for ev in sub:
            if isinstance(ev, SHOWN):
                print(line(path, ev), flush=True)
            elif isinstance(ev, ProcessOutput):  # its OS children's output, under their paths
                print(f"{path}/{ev.path}: {ev.line}", flush=True)

    printer = asyncio.ensure_future(show())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await tree.start()
        except FailedToStartChild as e:
            print(f"isolated {path}: its tree failed to start: {describe(e)}", file=sys.stderr, flush=True)
            return 1
        print(ISOLATED_READY, flush=True)
        stopped = asyncio.ensure_future(stop.wait())
        ended = asyncio.ensure_future(tree.wait())
        await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if ended.done():
            print(f"isolated {path}: its supervisor ended: {ended.result()}", file=sys.stderr, flush=True)
            await tree.stop()
            return 1
        ended.cancel()
        await tree.stop()
        return 0
    finally:
        sub.close()
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mcp_supervisor.daemon.isolated CONFIG PATH", file=sys.stderr)
        return 2
    return asyncio.run(run(argv[0], argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
