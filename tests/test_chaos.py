"""Chaos soak of the local stack: while the example application writes a row every 0.5 s, a seeded random hand
kill -9s the backing servers (PostgreSQL, Redis, moto, OpenBao) and restarts workers through the admin port.

Invariants: every row the application acknowledged is in PostgreSQL at the end; every target is back (running,
a new pid) within its bound after each blow; the daemon's memory and open files stay flat; after SIGTERM no process
of the stack is left. ``MCP_SOAK_SECONDS`` (default 45) and ``MCP_SOAK_SEED`` (default 7) shape the run.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from mcp_supervisor.testing import alive, wait_until
from tests.stack_helpers import Stack, rounds_ok, tree_pids

SOAK = float(os.environ.get("MCP_SOAK_SECONDS", "45"))
SEED = int(os.environ.get("MCP_SOAK_SEED", "7"))
BOUND = 90.0  # seconds for a target to be back: server start (PostgreSQL recovery, moto's import) plus backoff
SERVERS = ("postgres/server", "redis/server", "s3/server", "vault/server")
WORKERS = ("postgres/db", "redis/cache", "s3/storage", "vault/secrets", "app")

pytestmark = [pytest.mark.servers, pytest.mark.realtime, pytest.mark.timeout(SOAK + 600)]


def usage(pid: int) -> tuple[int, int]:
    """(resident bytes, open file descriptors) of ``pid``."""
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def group(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True, check=False).stdout
    return {int(p) for p in out.split()} | {pid}


def leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (the stack's private data directory or a port)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and alive(int(name)):
                found.append(f"{name}: {cmd[:120]}")
    return found


async def stored_rows(port: str) -> set[int]:
    conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user="postgres", database="postgres")
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM tenant_demo.events")}
    finally:
        await conn.close()


def test_chaos_soak_of_the_local_stack(tmp_path: Path, stack_env: dict[str, str]) -> None:
    rng = random.Random(SEED)
    d = Stack(tmp_path, stack_env)
    seen: set[int] = set()
    blows: list[tuple[str, float]] = []
    samples: list[tuple[int, int]] = []
    try:
        d.wait_notify("READY=1", timeout=120)
        wait_until(lambda: len(rounds_ok(d)) >= 3, 90, "the example's round trips")
        samples.append(usage(d.proc.pid))
        end = time.monotonic() + SOAK
        while time.monotonic() < end:
            target = rng.choice(SERVERS + SERVERS + WORKERS)  # servers twice as often: they are the hard part
            wait_until(lambda: all(s == "running" for _, _, s in tree_pids(d).values()), BOUND, "a settled tree")
            before = tree_pids(d)
            for pid, _, _ in before.values():
                if pid:
                    seen |= group(pid)
            t0 = time.monotonic()
            if target in SERVERS:
                os.kill(before[target][0], 9)
            else:
                code, body, _ = d.request("POST", f"/children/{target}/restart")
                assert code == 200, body

            def back(t: str = target, old: tuple[object, ...] = before[target]) -> bool:
                now = tree_pids(d)
                # a restarting supervisor lists no children for a moment: absent is "not back yet"
                return t in now and all(s == "running" for _, _, s in now.values()) and now[t][:2] != old[:2]

            wait_until(back, BOUND, f"{target} back after the blow")
            blows.append((target, time.monotonic() - t0))
            n = len(rounds_ok(d))
            wait_until(lambda n=n: len(rounds_ok(d)) >= n + 2, BOUND, "the application writing again")
            samples.append(usage(d.proc.pid))
        acknowledged = {e["row_id"] for e in rounds_ok(d)}
        stored = asyncio.run(stored_rows(stack_env["MCP_PG_PORT"]))
        for pid, _, _ in tree_pids(d).values():
            if pid:
                seen |= group(pid)
        assert d.stop(120) == 0
    finally:
        if d.proc.poll() is None:
            d.stop()
    lost = acknowledged - stored
    assert not lost, f"{len(lost)} acknowledged rows are not in PostgreSQL: {sorted(lost)[:10]}"
    assert len(blows) >= 5, blows
    wait_until(lambda: not [p for p in seen if alive(p)], 20, "every process of the stack gone")
    assert leftovers(stack_env["MCP_VAR_DIR"]) == []
    # flat: the second half of the run holds no more than the first half plus a margin (caches warm up early)
    half = len(samples) // 2
    rss_a, rss_b = max(s[0] for s in samples[:half]), max(s[0] for s in samples[half:])
    fds_a, fds_b = max(s[1] for s in samples[:half]), max(s[1] for s in samples[half:])
    assert rss_b <= rss_a + 32 * 2**20, (rss_a, rss_b)
    assert fds_b <= fds_a + 16, (fds_a, fds_b)
    print(f"\nchaos soak: {len(blows)} blows, {len(acknowledged)} rows acknowledged and stored; slowest return "
          f"{max(t for _, t in blows):.1f}s; rss {rss_a >> 20}->{rss_b >> 20} MiB, fds {fds_a}->{fds_b}")  # fmt: skip
