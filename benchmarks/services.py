"""Service workers' handles vs the raw client library, in the same run, against private servers it starts.

    python benchmarks/services.py           # a table
    python benchmarks/services.py --json    # one JSON object per line (name, value, unit, baseline, ..., ratio)

Redis GET and SET, PostgreSQL ``SELECT 1`` and a small parameterised query, and Vault KV reads, each at
concurrency 1 and 50, as operations per second; S3 upload and download of a 64 MiB object in MB/s. Ratio =
worker / raw (higher is better; target >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import uvloop

from mcp_supervisor.core import SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.services import postgres, redis, s3, vault
from mcp_supervisor.testing.servers import BaoServer, MotoServer, PgServer, RedisServer

RESULTS: list[dict[str, Any]] = []


def record(name: str, value: float, baseline: str, baseline_value: float, unit: str = "ops/s") -> None:
    RESULTS.append({"name": name, "value": round(value, 1), "unit": unit, "baseline": baseline,
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

    # 50 tasks queueing for 10 connections: asyncpg's pool pays a reset round trip per checkout, the handle only
    # where a statement may have left session state
    small = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="db", run=postgres.factory(
        {**settings, "pool_size": 10, "min_size": 10}))]))  # fmt: skip
    await small.start()
    db = await small.handle("db")
    raw = await asyncpg.create_pool(host="127.0.0.1", port=server.port, user="postgres", database="postgres",
                                    min_size=10, max_size=10)  # fmt: skip

    async def tenant_rw() -> None:
        async with db.tenant("bench") as conn:
            await conn.fetchrow("SELECT id, name FROM public.bench WHERE id = $1", 42)

    async def raw_tenant_rw() -> None:
        async with raw.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('search_path', $1, true)", "tenant_bench, public")
            await conn.fetchrow("SELECT id, name FROM public.bench WHERE id = $1", 42)

    await db.create_tenant_schema("bench")
    w, r = await pair(lambda: db.fetchval("SELECT 1"), lambda: raw.fetchval("SELECT 1"), 50, seconds)
    record("pg_select1_c50_pool10", w, "raw asyncpg pool (defaults)", r)
    w, r = await pair(lambda: db.fetchrow(sql, 42), lambda: raw.fetchrow(sql, 42), 50, seconds)
    record("pg_param_query_c50_pool10", w, "raw asyncpg pool (defaults)", r)
    w, r = await pair(tenant_rw, raw_tenant_rw, 50, seconds)
    record("pg_tenant_txn_c50_pool10", w, "raw asyncpg acquire+transaction", r)
    await raw.close()
    await small.stop()


async def bench_s3(server: MotoServer, size: int = 64 * 2**20, rounds: int = 5) -> None:
    import tempfile

    from aiobotocore.session import get_session

    settings = {**server.settings, "part_size": 8 * 2**20, "max_concurrency": 4}
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="storage", run=s3.factory(settings))]))
    await tree.start()
    st = await tree.handle("storage")
    data = os.urandom(size)
    parsed = s3.S3Settings(settings)
    async with get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing-secret", config=parsed.client_config(),
    ) as raw:  # fmt: skip

        async def raw_upload() -> None:
            up = await raw.create_multipart_upload(Bucket=parsed.bucket, Key="raw.bin")
            part = 8 * 2**20
            sem = asyncio.Semaphore(4)

            async def one(n: int, body: bytes) -> dict[str, Any]:
                async with sem:
                    r = await raw.upload_part(Bucket=parsed.bucket, Key="raw.bin", UploadId=up["UploadId"],
                                              PartNumber=n, Body=body)  # fmt: skip
                    return {"PartNumber": n, "ETag": r["ETag"]}

            parts = await asyncio.gather(*(one(i + 1, data[o : o + part])
                                           for i, o in enumerate(range(0, size, part))))  # fmt: skip
            await raw.complete_multipart_upload(Bucket=parsed.bucket, Key="raw.bin", UploadId=up["UploadId"],
                                                MultipartUpload={"Parts": list(parts)})  # fmt: skip

        async def raw_download(path: str) -> None:
            # the same durable work as the worker's download: write, fsync (the worker also renames atomically)
            r = await raw.get_object(Bucket=parsed.bucket, Key="raw.bin")
            with open(path, "wb") as f:
                async with r["Body"] as body:
                    while chunk := await body.read(1 << 20):
                        f.write(chunk)
                f.flush()
                os.fsync(f.fileno())

        mb = size / 2**20
        up_w, up_r, down_w, down_r = [], [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(rounds):
                t0 = time.perf_counter()
                await st.upload("worker.bin", data)
                up_w.append(mb / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                await raw_upload()
                up_r.append(mb / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                await st.download("worker.bin", f"{tmp}/w.bin")
                down_w.append(mb / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                await raw_download(f"{tmp}/r.bin")
                down_r.append(mb / (time.perf_counter() - t0))
        record("s3_upload_64MiB", max(up_w), "raw aiobotocore multipart", max(up_r), "MB/s")
        record("s3_download_64MiB", max(down_w), "raw aiobotocore get_object", max(down_r), "MB/s")
    await tree.stop()


async def bench_vault(server: BaoServer, seconds: float) -> None:
    import aiohttp

    tree = Tree(SupervisorSpec(id="root", children=[
        WorkerSpec(id="vault", run=vault.factory({"addr": server.addr, "token": server.TOKEN}))]))  # fmt: skip
    await tree.start()
    v = await tree.handle("vault")
    await v.kv_write("bench/secret", {"k": "v" * 64})
    async with aiohttp.ClientSession() as session:
        url = f"{server.addr}/v1/secret/data/bench/secret"
        headers = {"X-Vault-Token": server.TOKEN}

        async def raw_read() -> Any:
            async with session.get(url, headers=headers) as r:
                return (await r.json())["data"]["data"]

        for conc in (1, 50):
            w, r = await pair(lambda: v.kv_read("bench/secret"), raw_read, conc, seconds)
            record(f"vault_kv_read_c{conc}", w, "raw aiohttp GET", r)
    await tree.stop()


SERVICES = ("redis", "postgres", "s3", "vault")


async def main_async(seconds: float, only: set[str]) -> None:
    rs, pg, moto, bao = RedisServer(), PgServer(), MotoServer(), BaoServer()
    try:
        if "redis" in only:
            rs.start()
            await bench_redis(rs, seconds)
        if "postgres" in only:
            pg.start()
            await bench_postgres(pg, seconds)
        if "s3" in only:
            moto.start()
            await bench_s3(moto)
        if "vault" in only:
            bao.start()
            await bench_vault(bao, seconds)
    finally:
        rs.cleanup()
        pg.cleanup()
        moto.stop()
        bao.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement (best of 4)")
    parser.add_argument("--only", action="append", choices=SERVICES, help="these services only (repeatable)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    args = parser.parse_args()
    for loop in ("asyncio", "uvloop") if args.loop == "both" else (args.loop,):
        first = len(RESULTS)
        run = uvloop.run if loop == "uvloop" else asyncio.run
        run(main_async(args.seconds, set(args.only or SERVICES)))
        for r in RESULTS[first:]:
            r["loop"] = loop
    if args.json:
        for r in RESULTS:
            print(json.dumps(r))
        return
    print(f"{'benchmark':<28} {'loop':<8} {'worker':>12} {'raw':>12} {'ratio':>7}  unit / baseline")
    for r in RESULTS:
        print(f"{r['name']:<28} {r['loop']:<8} {r['value']:>12.1f} {r['baseline_value']:>12.1f} {r['ratio']:>7.2f}  "
              f"{r['unit']} / {r['baseline']}")  # fmt: skip


if __name__ == "__main__":
    main()
