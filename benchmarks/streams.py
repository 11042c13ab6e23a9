"""What live streams cost the tree: restart latency with 32 ``/events`` streams attached vs none, in one run, and
the events per second delivered to 32 streams during a restart storm.

    python benchmarks/streams.py [--json] [--quick]

The daemon side (tree, journal, admin port) runs here on uvloop; the 32 readers run in a separate process, as
browsers and ``ctl`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from vs_otp import STORM

from core import Crashy, crash_cycles, print_rows
from mcp_supervisor.admin.journal import Journal
from mcp_supervisor.admin.seams import TreePort
from mcp_supervisor.admin.server import STREAMS, build_app
from mcp_supervisor.core import SupervisorSpec, Tree, WorkerSpec

HERE = Path(__file__).resolve().parent

STREAM_COUNT = 32


async def reader(port: int, n: int) -> None:
    """The other process: ``n`` SSE readers; prints the events they received when told (SIGUSR1), then exits."""
    received = 0
    report = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report.set)

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal received
        async with session.get(f"http://127.0.0.1:{port}/events?follow=1") as resp:
            async for line in resp.content:
                if line.startswith(b"id: "):
                    received += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.ensure_future(one(session)) for _ in range(n)]
        while True:
            await report.wait()
            report.clear()
            print(received, flush=True)
            if all(t.done() for t in tasks):
                return


class Audit:
    def info(self, *a: Any, **kw: Any) -> None:
        pass


async def main_async(quick: bool) -> list[dict[str, Any]]:
    crashy = Crashy()
    tree = Tree(SupervisorSpec(id="root", flags=STORM, children=[WorkerSpec(id="w", run=crashy.run)]))
    await tree.start()
    journal = Journal()
    pump = asyncio.ensure_future(journal.pump(tree.bus))

    state = TreePort(tree=tree, log=Audit(), journal=journal)
    app = build_app(state, state, None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    n = 1000 if quick else 5000
    await crash_cycles(tree, crashy, "w", 200)  # warm up
    alone = await crash_cycles(tree, crashy, "w", n)
    proc = subprocess.Popen([sys.executable, __file__, "--reader", str(port), str(STREAM_COUNT)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while app[STREAMS].open < STREAM_COUNT:
            if time.monotonic() > deadline:
                raise RuntimeError("the readers did not connect")
            await asyncio.sleep(0.05)
        watched = await crash_cycles(tree, crashy, "w", n)
        # delivery: a storm for a few seconds, then how many events reached the readers
        assert proc.stdout is not None
        proc.send_signal(signal.SIGUSR1)
        before = int(await asyncio.to_thread(proc.stdout.readline))
        first_id = journal.last_id
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < (1.0 if quick else 3.0):
            await crash_cycles(tree, crashy, "w", 100)
        emitted = journal.last_id - first_id
        await asyncio.sleep(1.0)  # let the readers catch up
        elapsed = time.perf_counter() - t0
        proc.send_signal(signal.SIGUSR1)
        after = int(await asyncio.to_thread(proc.stdout.readline))
    finally:
        proc.kill()
        proc.wait()
        pump.cancel()
        await runner.cleanup()
        await tree.stop()
    a, w = statistics.median(alone) * 1e6, statistics.median(watched) * 1e6
    delivered = after - before
    return [
        {"name": "restart_latency_median_no_streams", "value": round(a, 2), "unit": "us"},
        {"name": f"restart_latency_median_{STREAM_COUNT}_streams", "value": round(w, 2), "unit": "us",
         "baseline_value": round(a, 2), "ratio": round(w / a, 3)},
        {"name": f"events_delivered_per_s_{STREAM_COUNT}_streams", "value": round(delivered / elapsed),
         "unit": "events/s", "note": f"{emitted} events x {STREAM_COUNT} streams = {emitted * STREAM_COUNT} to "
                                     f"deliver; {delivered} delivered"},
    ]  # fmt: skip


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--reader":
        uvloop.run(reader(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = uvloop.run(main_async(args.quick))
    print_rows(rows, args.json, "no streams")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
