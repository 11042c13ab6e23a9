"""The postgres worker against a private PostgreSQL 15 started by the tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest

from mcp_supervisor.core import (
    Backoff,
    ChildStarted,
    RestartScheduled,
    SupervisorFlags,
    SupervisorSpec,
    Tree,
    WorkerSpec,
)
from mcp_supervisor.services.base import ServiceUnavailable, service
from mcp_supervisor.services.events import ServiceOperation
from mcp_supervisor.services.postgres import (
    Database,
    ExtensionMissing,
    PgSettings,
    PoolExhausted,
    TenantError,
    factory,
    tenant_schema,
)
from mcp_supervisor.testing import Recorder, until
from mcp_supervisor.testing.servers import PgServer


def db_tree(pg: PgServer, **settings: Any) -> Tree:
    spec = WorkerSpec(
        id="db", run=factory({**pg.settings, **settings}), backoff=Backoff(initial=0.1, max=0.5, jitter=0)
    )
    return Tree(SupervisorSpec(id="root", flags=SupervisorFlags(intensity=100, period=5), children=[spec]))


async def handle(tree: Tree) -> Database:
    db = await tree.handle("db", wait=10)
    assert isinstance(db, Database)
    return db


async def test_queries_and_their_events_carry_sql_without_arguments(pg: PgServer) -> None:
    tree = db_tree(pg)
    rec = Recorder(tree.bus)
    async with tree:
        db = await handle(tree)
        assert await db.fetchval("SELECT $1::int + 1", 41) == 42
        secret = "s3cr3t-value"
        await db.fetchval("SELECT length($1::text)", secret)
    ops = [e for e in rec.drain() if isinstance(e, ServiceOperation) and e.service == "db"]
    stmts = [e.statement for e in ops]
    assert "SELECT $1::int + 1" in stmts and "SELECT length($1::text)" in stmts
    assert not any(secret in repr(e) for e in rec.seen)
    assert all(e.operation in ("select", "other") for e in ops)


def test_settings_by_env_and_prod_strictness() -> None:
    assert PgSettings({"env": "prod", "host": "db", "password": "x"}).pool_size == 20
    assert PgSettings({"env": "test"}).pool_size == 1
    assert PgSettings({"env": "dev"}).pool_size == 10
    assert PgSettings({"env": "dev", "pool_size": 3}).pool_size == 3
    assert PgSettings({"port": "6543"}).port == 6543
    assert PgSettings({"pgbouncer": True}).statement_cache_size == 0
    with pytest.raises(ValueError, match="host: required when env = prod"):
        PgSettings({"env": "prod", "password": "x"})
    with pytest.raises(ValueError, match="password: required when env = prod"):
        PgSettings({"env": "prod", "host": "db"})
    with pytest.raises(ValueError, match=r"port: must be an integer 1\.\.65535, got 70000"):
        PgSettings({"port": 70000})
    with pytest.raises(ValueError, match="sslmode: must be one of"):
        PgSettings({"sslmode": "true"})
    assert "x" not in PgSettings({"password": "x"}).describe()


async def test_tenant_isolation_and_search_path_scoped_to_one_transaction(pg: PgServer) -> None:
    a, b = "acme", str(uuid.uuid4())
    async with db_tree(pg) as tree:
        db = await handle(tree)
        for t in (a, b):
            await db.drop_tenant_schema(t, cascade=True)
            await db.create_tenant_schema(t)
            async with db.tenant(t) as conn:
                await conn.execute("CREATE TABLE items (v text)")
                await conn.execute("INSERT INTO items VALUES ($1)", f"row of {t}")
        async with db.tenant(a) as conn:
            assert [r["v"] for r in await conn.fetch("SELECT v FROM items")] == [f"row of {a}"]
            assert await conn.fetchval("SELECT current_schemas(false)") == [tenant_schema(a), "public"]
        async with db.tenant(b) as conn:
            assert [r["v"] for r in await conn.fetch("SELECT v FROM items")] == [f"row of {b}"]
        assert tenant_schema(b) == "tenant_" + b.replace("-", "_")
        assert await db.fetchval("SHOW search_path") == '"$user", public'  # not leaked to the pool
        with pytest.raises(asyncpg.UndefinedTableError):
            await db.fetch("SELECT v FROM items")
        for t in (a, b):
            await db.drop_tenant_schema(t, cascade=True)


@pytest.mark.parametrize(
    "bad", ["a; DROP SCHEMA public CASCADE", 'x"; select 1; --', "tenant/../x", "", "  ", "x" * 60, "é", 42]
)
async def test_injection_attempts_fail_with_a_clear_error(pg: PgServer, bad: Any) -> None:
    async with db_tree(pg) as tree:
        db = await handle(tree)
        with pytest.raises(TenantError, match="tenant id"):
            async with db.tenant(bad):
                pass
        with pytest.raises(TenantError):
            await db.create_tenant_schema(bad)
        assert await db.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'") == 1


async def test_create_hypertable_without_timescaledb_says_so(pg: PgServer) -> None:
    async with db_tree(pg) as tree:
        db = await handle(tree)
        available = await db.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        if available:
            pytest.skip("TimescaleDB is installed here; this test covers its absence")
        await db.execute("CREATE TABLE IF NOT EXISTS metrics (time timestamptz NOT NULL, v float8)")
        with pytest.raises(ExtensionMissing, match="needs the timescaledb extension"):
            await db.create_hypertable("metrics", "time", "1 day")


async def test_postgis_geometry_round_trip(pg: PgServer) -> None:
    async with db_tree(pg) as tree:
        db = await handle(tree)
        if not await db.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'"):
            pytest.skip("PostGIS is not installed (Debian package postgresql-15-postgis-3)")
        await db.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    async with db_tree(pg) as tree:  # a new pool: its connections register the geometry codec
        db = await handle(tree)
        assert "postgis" in db.extensions
        wkb = await db.fetchval("SELECT ST_AsBinary(ST_GeomFromText('POINT(1 2)'))")
        geom = await db.fetchval("SELECT ST_GeomFromText('POINT(1 2)')")
        assert isinstance(geom, bytes)
        assert await db.fetchval("SELECT ST_AsText($1::geometry)", geom) == "POINT(1 2)"
        assert await db.fetchval("SELECT ST_AsBinary($1::geometry) = $2", geom, wkb)


async def test_soft_deletes(pg: PgServer) -> None:
    async with db_tree(pg) as tree:
        db = await handle(tree)
        await db.execute("DROP TABLE IF EXISTS users CASCADE")
        await db.execute("CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL)")
        await db.enable_archival("users", unique=("email",))
        uid = await db.fetchval("INSERT INTO users (email) VALUES ('a@x') RETURNING id")
        with pytest.raises(asyncpg.UniqueViolationError):
            await db.execute("INSERT INTO users (email) VALUES ('a@x')")
        assert await db.archive("users", uid) is True
        assert await db.archive("users", uid) is False  # already archived
        assert await db.fetchval("SELECT count(*) FROM users_active") == 0
        await db.execute("INSERT INTO users (email) VALUES ('a@x')")  # the partial index allows it now
        assert await db.fetchval("SELECT count(*) FROM users_active") == 1
        assert await db.purge("users", "0 seconds") == 1
        assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_pool_exhaustion_is_a_fast_counted_error(pg: PgServer) -> None:
    async with db_tree(pg, pool_size=1, acquire_timeout=0.2) as tree:
        db = await handle(tree)
        async with db.acquire():
            # the message names the 0.2 s deadline that fired; the outer bound only guards against a hang
            with pytest.raises(PoolExhausted, match=r"no database connection free within 0\.2s"):
                async with asyncio.timeout(30):
                    await db.fetchval("SELECT 1")
        assert db.stats()["acquire_timeouts"] == 1
        probe = await db.probe()
        assert probe is not None and probe.status == "pass"


async def test_server_killed_mid_traffic_fast_errors_restart_with_backoff_then_recovery(pg: PgServer) -> None:
    results: list[tuple[float, str]] = []

    async def app(ctx: Any) -> None:
        db = service(ctx, "db", Database, wait=0.5)
        ctx.started()
        while True:
            t0 = time.monotonic()
            try:
                await (await db.get()).fetchval("SELECT 1")
                results.append((time.monotonic() - t0, "ok"))
            except ServiceUnavailable as e:
                results.append((time.monotonic() - t0, f"unavailable: {e}"))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
                results.append((time.monotonic() - t0, f"other: {type(e).__name__}"))
            await asyncio.sleep(0.01)

    spec = SupervisorSpec(
        id="root",
        flags=SupervisorFlags(intensity=100, period=5),
        children=[
            WorkerSpec(id="db", run=factory({**pg.settings, "pool_size": 4, "check_interval": 0.1,
                                             "connect_attempts": 1, "connect_timeout": 1, "command_timeout": 2}),
                       backoff=Backoff(initial=0.2, max=1.0, jitter=0)),
            WorkerSpec(id="app", run=app),
        ],
    )  # fmt: skip
    tree = Tree(spec)
    rec = Recorder(tree.bus)
    async with tree:
        await until(lambda: sum(1 for _, r in results if r == "ok") >= 20, what="traffic flowing")
        pg.kill()
        mark = len(results)
        await rec.wait(lambda e: isinstance(e, RestartScheduled) and e.path == "db", timeout=15)
        await until(lambda: len(results) > mark + 20, what="callers failing")
        failing = results[mark:]
        assert all(r != "ok" for _, r in failing[5:])
        assert any(r.startswith("unavailable") for _, r in failing)
        assert max(d for d, _ in failing) < 30  # clear errors, never a hang (the longest timeout in play is 2 s)
        assert tree.status().as_dict()["children"][1]["restarts"] == 0, tree.status().as_dict()["children"][1][
            "last_exit"
        ]  # untouched
        pg.start()
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.path == "db" and e.restarts >= 1, timeout=30)
        back = len(results)
        await until(lambda: any(r == "ok" for _, r in results[back:]), what="recovery")


async def test_command_timeouts_cancel_the_query_and_the_connection_stays_usable(pg: PgServer) -> None:
    async with db_tree(pg, pool_size=1, command_timeout=0.3) as tree:
        db = await handle(tree)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"within 0\.3s"):
            await db.fetchval("SELECT pg_sleep(60)")
        assert time.monotonic() - t0 < 30  # cancelled, not waited out
        assert await db.fetchval("SELECT 1") == 1  # the single connection was cleaned up, not left busy
        assert await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'") == 0
        async with db.acquire() as conn:  # handed-out connections: the server's statement_timeout
            assert await conn.fetchval("SHOW statement_timeout") == "300ms"
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.fetchval("SELECT pg_sleep(5)")
