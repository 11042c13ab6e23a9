"""A small demo tree (used by the README's run command until the daemon lands)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from .core import Call, ProcessOutput, ProcessSpec, SupervisorFlags, SupervisorSpec, Tree, WorkerSpec


async def counter(ctx: Any) -> None:
    ctx.register("counter")
    n = 0
    ctx.started()
    async for msg in ctx.mailbox:
        n += 1
        if isinstance(msg, Call):
            msg.reply(n)


async def main() -> None:
    spec = SupervisorSpec(
        id="demo",
        children=[
            WorkerSpec(id="counter", run=counter),
            SupervisorSpec(
                id="edge",
                flags=SupervisorFlags(strategy="rest_for_one"),
                children=[
                    ProcessSpec(id="ticker", command=["sh", "-c", "while :; do date +tick-%T; sleep 2; done"]),
                    ProcessSpec(id="sleeper", command=["sleep", "3600"]),
                ],
            ),
        ],
    )
    tree = Tree(spec)
    sub = tree.bus.subscribe()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await tree.start()
    print(json.dumps(tree.status(), indent=2), flush=True)
    print("demo tree running; Ctrl-C stops it", flush=True)

    async def show() -> None:
        async for ev in sub:
            if isinstance(ev, ProcessOutput):
                print(f"[{ev.path}] {ev.line}", flush=True)
            else:
                print(f"event: {ev}", flush=True)

    shower = asyncio.ensure_future(show())
    await stop.wait()
    report = await tree.stop()
    shower.cancel()
    print(f"stopped; unstopped children: {list(report.unstopped)}", flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
