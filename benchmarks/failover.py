"""Fleet mode: how long a singleton is down when its holder's daemon is killed (``kill -9``) or stopped
(``SIGTERM``), over many takeovers, next to the configured lease; and the database load per node.

    python benchmarks/failover.py [--json] [--takeovers N] [--quick]

Three daemons against a private PostgreSQL, a singleton OS child (``sleep``); lease 2 s, heartbeat 0.5 s for the
takeovers. The load is read from PostgreSQL's own counters (``pg_stat_database.xact_commit``) while three idle
nodes run with the default lease and heartbeat (10 s, 3.3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon
from mcp_supervisor.testing.servers import PgServer

ROOT = Path(__file__).resolve().parents[1]

NAMES = ("a", "b", "c")


def config(pg: PgServer, node: str, lease: float | None, heartbeat: float | None) -> str:
    timing = (f"lease = {lease}\n" if lease else "") + (f"heartbeat = {heartbeat}\n" if heartbeat else "")
    return f"""
[cluster]
dsn = "postgresql://postgres@127.0.0.1:{pg.port}/postgres"
node = "{node}"
{timing}
[tree]
[[tree.children]]
id = "single"
singleton = true
shutdown = 0.2
command = ["sleep", "1000"]
"""


def holder(nodes: dict[str, Daemon]) -> str | None:
    for name, d in nodes.items():
        if d.proc.poll() is not None:
            continue
        try:
            if d.node("single")["state"] == "running":
                return name
        except (KeyError, OSError, AssertionError):
            continue
    return None


def takeovers(pg: PgServer, tmp: Path, count: int, how: int) -> list[float]:
    lease, heartbeat = 2.0, 0.5
    nodes: dict[str, Daemon] = {}

    def start(name: str) -> None:
        where = tmp / f"{name}-{time.monotonic_ns()}"
        where.mkdir()
        nodes[name] = Daemon(where, config(pg, name, lease, heartbeat))
        nodes[name].wait_ready()

    for name in NAMES:
        start(name)
    times = []
    try:
        for _ in range(count):
            first: str = wait_until(lambda: holder(nodes), timeout=60, what="a holder")
            began = time.monotonic()
            nodes[first].proc.send_signal(how)
            nodes[first].proc.wait()
            wait_until(lambda old=first: (h := holder(nodes)) is not None and h != old, timeout=60,
                       what="a takeover")  # fmt: skip
            times.append(time.monotonic() - began)
            nodes[first].stop()
            start(first)
    finally:
        for d in nodes.values():
            d.stop()
    return times


async def commits(pg: PgServer) -> int:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres")
    try:
        return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"))
    finally:
        await conn.close()


def load(pg: PgServer, tmp: Path, seconds: float) -> float:
    nodes = []
    for name in NAMES:
        where = tmp / f"load-{name}"
        where.mkdir()
        nodes.append(Daemon(where, config(pg, f"load-{name}", None, None)))
    try:
        for d in nodes:
            d.wait_ready()
        time.sleep(4)  # the first heartbeats (schema, first acquisition) are not the steady state
        before = asyncio.run(commits(pg))
        time.sleep(seconds)
        after = asyncio.run(commits(pg))
    finally:
        for d in nodes:
            d.stop()
    return (after - before - 2) / seconds / len(nodes)  # our own two reads of the counter are not the nodes'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--takeovers", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 takeovers of each kind, a 5 s load window")
    args = parser.parse_args()
    count = 3 if args.quick else args.takeovers
    pg = PgServer()
    pg.start()
    figures: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            os.chmod(tmp, 0o755)
            for label, sig in (("kill9", signal.SIGKILL), ("sigterm", signal.SIGTERM)):
                t = takeovers(pg, tmp, count, sig)
                figures[f"{label}_takeover_median_s"] = statistics.median(t)
                figures[f"{label}_takeover_max_s"] = max(t)
                figures[f"{label}_takeovers"] = len(t)
            figures["lease_s"] = 2.0
            figures["statements_per_s_per_node_default_heartbeat"] = load(pg, tmp, 5 if args.quick else 30)
    finally:
        pg.cleanup()
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"lease {figures['lease_s']:g}s, heartbeat 0.5s, 3 nodes")
    for label, what in (("kill9", "kill -9 of the holder's daemon"), ("sigterm", "SIGTERM of the holder's daemon")):
        median, top = figures[f"{label}_takeover_median_s"], figures[f"{label}_takeover_max_s"]
        print(f"  {what:<34} singleton back after median {median:.2f}s, max {top:.2f}s "
              f"over {figures[f'{label}_takeovers']} takeovers")  # fmt: skip
    print(
        f"  database load at the default lease (10s) and heartbeat (3.3s): "
        f"{figures['statements_per_s_per_node_default_heartbeat']:.2f} statements/s per node"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
