"""Service workers' handles vs the raw client library, in the same run, against private servers it starts.

    python benchmarks/services.py           # a table
    python benchmarks/services.py --json    # one JSON object per line (name, value, unit, baseline, ..., ratio)

Redis GET and SET, PostgreSQL ``SELECT 1`` and a small parameterised query, each at concurrency 1 and 50, as
operations per second (ratio = worker / raw; higher is better; target >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import asyncpg
import redis.asyncio as aioredis
from tests.services.servers import PgServer, RedisServer

from mcp_supervisor.core import SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.services import postgres, redis

RESULTS: list[dict[str, Any]] = []


def record(name: str, value: float, baseline: str, baseline_value: float) -> None:
    RESULTS.append({"name": name, "value": round(value, 1), "unit": "ops/s", "baseline": baseline,
                    "baseline_value": round(baseline_value, 1), "ratio": round(value / baseline_value, 3)})  # fmt: skip


async def rate(op: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> float:
    """Operations per second with ``concurrency`` tasks looping on ``op`` for ``seconds``."""
    count = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await op()
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return count / (time.perf_counter() - t0)


async def pair(
    worker: Callable[[], Awaitable[Any]],
    raw: Callable[[], Awaitable[Any]],
    concurrency: int,
    seconds: float,
    rounds: int = 4,
) -> tuple[float, float]:
    """Best of ``rounds`` for each, interleaved so that server warm-up and drift hit both alike."""
    w: list[float] = []
    r: list[float] = []
    for _ in range(rounds):
        w.append(await rate(worker, concurrency, seconds))
        r.append(await rate(raw, concurrency, seconds))
    return max(w), max(r)


async def bench_redis(server: RedisServer, seconds: float) -> None:
    tree = Tree(SupervisorSpec(id="root", children=[
        WorkerSpec(id="cache", run=redis.factory({**server.settings, "max_connections": 50}))]))  # fmt: skip
    await tree.start()
    cache = await tree.handle("cache")
    raw = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool(host="127.0.0.1", port=server.port, max_connections=50)
    )
    await cache.set("bench", {"v": "x" * 100})
    await raw.set("bench-raw", json.dumps({"v": {"v": "x" * 100}}))
    for conc in (1, 50):
        worker_get, raw_get = await pair(lambda: cache.get("bench"), lambda: raw.get("bench-raw"), conc, seconds)
        record(f"redis_get_c{conc}", worker_get, "raw redis-py GET", raw_get)
        worker_set, raw_set = await pair(
            lambda: cache.set("bench", 1, ttl=60), lambda: raw.set("bench-raw", "1", ex=60), conc, seconds
        )
        record(f"redis_set_c{conc}", worker_set, "raw redis-py SET EX", raw_set)
    await raw.aclose()
    await raw.connection_pool.disconnect()
    await tree.stop()


async def bench_postgres(server: PgServer, seconds: float) -> None:
    settings = {**server.settings, "pool_size": 50, "min_size": 50, "env": "dev"}
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="db", run=postgres.factory(settings))]))
    await tree.start()
    db = await tree.handle("db")
    raw = await asyncpg.create_pool(host="127.0.0.1", port=server.port, user="postgres", database="postgres",
                                    min_size=50, max_size=50)  # fmt: skip
    await db.execute("CREATE TABLE IF NOT EXISTS bench (id int PRIMARY KEY, name text)")
    await db.execute("INSERT INTO bench SELECT g, 'name ' || g FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING")
    sql = "SELECT id, name FROM bench WHERE id = $1"
    for conc in (1, 50):
        w, r = await pair(lambda: db.fetchval("SELECT 1"), lambda: raw.fetchval("SELECT 1"), conc, seconds)
        record(f"pg_select1_c{conc}", w, "raw asyncpg pool", r)
        w, r = await pair(lambda: db.fetchrow(sql, 42), lambda: raw.fetchrow(sql, 42), conc, seconds)
        record(f"pg_param_query_c{conc}", w, "raw asyncpg pool", r)
    await raw.close()
    await tree.stop()


async def main_async(seconds: float) -> None:
    rs = RedisServer()
    pg = PgServer()
    try:
        rs.start()
        pg.start()
        await bench_redis(rs, seconds)
        await bench_postgres(pg, seconds)
    finally:
        rs.cleanup()
        pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement (best of 3)")
    args = parser.parse_args()
    asyncio.run(main_async(args.seconds))
    if args.json:
        for r in RESULTS:
            print(json.dumps(r))
        return
    print(f"{'benchmark':<24} {'worker':>12} {'raw':>12} {'ratio':>7}  unit / baseline")
    for r in RESULTS:
        print(f"{r['name']:<24} {r['value']:>12.1f} {r['baseline_value']:>12.1f} {r['ratio']:>7.2f}  "
              f"{r['unit']} / {r['baseline']}")  # fmt: skip


if __name__ == "__main__":
    main()
