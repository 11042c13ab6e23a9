"""What alerts cost the tree: restart latency with no receivers vs an alert per restart sent to receivers that
never answer (a webhook that accepts the connection and stays silent, and one that refuses it), in one run.

    python benchmarks/alerts.py [--json] [--quick]

Each restart is followed by one alert-worthy event (a supervisor giving up: never folded into a crash-loop episode),
so every restart makes an alert for each receiver; the receivers' bounded queues fill and the rest is dropped and
counted — the tree never waits on them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
from typing import Any

import uvloop
from vs_otp import STORM

from core import Crashy, crash_cycles, print_rows
from mcp_supervisor.config.model import AlertConfig
from mcp_supervisor.core import IntensityExceeded, SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.daemon.alerts import QUEUE, Alerts


class Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: None


async def cycles_with_alerts(tree: Tree, crashy: Crashy, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out += await crash_cycles(tree, crashy, "w", 1)
        tree.bus.emit(IntensityExceeded(path="w", intensity=1, period=1.0))
    return out


async def main_async(quick: bool) -> list[dict[str, Any]]:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    silent_port = silent.sockets[0].getsockname()[1]
    with socket.socket() as sock:  # a port nobody listens on: refused
        sock.bind(("127.0.0.1", 0))
        refused_port = sock.getsockname()[1]
    crashy = Crashy()
    tree = Tree(SupervisorSpec(id="root", flags=STORM, children=[WorkerSpec(id="w", run=crashy.run)]))
    await tree.start()
    n = 1000 if quick else 5000
    await crash_cycles(tree, crashy, "w", 200)  # warm up
    alone = await crash_cycles(tree, crashy, "w", n)
    alerts = Alerts(tree.bus, "bench", str, Quiet())
    await alerts.configure([
        AlertConfig(name="silent", on=("gave-up",), webhook=f"http://127.0.0.1:{silent_port}/hook", rate=10_000,
                    per=1, timeout=30),
        AlertConfig(name="refused", on=("gave-up",), webhook=f"http://127.0.0.1:{refused_port}/hook", rate=10_000,
                    per=1, retries=20),
    ])  # fmt: skip
    alerts.start()
    try:
        alerted = await cycles_with_alerts(tree, crashy, n)
        await asyncio.sleep(0)
        samples = {s.name: s for s in alerts.samples()}
    finally:
        await tree.stop()
        for rec in alerts.receivers.values():
            await rec.stop(0)
        silent.close()
    a, w = statistics.median(alone) * 1e6, statistics.median(alerted) * 1e6
    s, r = samples["silent"], samples["refused"]
    return [
        {"name": "restart_latency_median_no_alerts", "value": round(a, 2), "unit": "us"},
        {"name": "restart_latency_median_alert_per_restart_dead_receivers", "value": round(w, 2), "unit": "us",
         "baseline_value": round(a, 2), "ratio": round(w / a, 3)},
        {"name": "alerts_held_per_dead_receiver", "value": max(s.queued, r.queued), "unit": "alerts",
         "note": f"{n} alerts each: silent {s.queued} queued / {s.dropped} dropped, refused {r.queued} queued / "
                 f"{r.dropped} dropped (queue bound {QUEUE} + the one in flight)"},
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = uvloop.run(main_async(args.quick))
    print_rows(rows, args.json, "no alerts")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
