"""``worker = "postgres"``: open the pool with bounded backoff, hand out the ``Database`` when ``SELECT 1`` answers,
exit (to be restarted with backoff) when the server is gone, close within the child's shutdown budget."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import asyncpg

from ...core import ChildContext, WorkerFn
from ..base import ServiceError, ServiceUnavailable, retry_connect
from .handle import Database, DbEmitter
from .pool import Connection, Pool
from .settings import PgSettings


async def open_pool(settings: PgSettings, emitter: DbEmitter) -> Pool:
    async def connect() -> Any:
        conn = await asyncpg.connect(
            host=settings.host, port=settings.port, user=settings.user, password=settings.password,
            database=settings.database, ssl=settings.ssl(), timeout=settings.connect_timeout,
            statement_cache_size=settings.statement_cache_size, connection_class=Connection,
            # Command timeouts: the handle's calls use a cheap client-side Deadline; connections handed out by
            # acquire()/tenant()/transaction() get the server's statement_timeout (a client timer per query
            # costs ~8 % at concurrency 50). PgBouncer rejects unknown startup parameters: asyncpg's own then.
            **({"command_timeout": settings.command_timeout} if settings.pgbouncer else
               {"server_settings": {"statement_timeout": str(int(settings.command_timeout * 1000))}}),
        )  # fmt: skip
        try:
            if settings.query_events == "all":  # halves throughput: asyncpg builds a record per query
                conn.add_query_logger(emitter.logged)
            await _register_codecs(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def start() -> Pool:
        pool = Pool(connect, settings.min_size, settings.pool_size, reset_timeout=settings.command_timeout)
        await pool.start()
        try:
            conn = await pool.acquire()
            try:
                await conn.fetchval("SELECT 1", timeout=settings.connect_timeout)
            finally:
                await pool.release(conn, finished=True, clean=False)
        except BaseException:
            pool.terminate()
            raise
        return pool

    return await retry_connect(start, settings.connect_attempts, 0.1, 2.0, f"postgres {settings.describe()}")


async def _register_codecs(conn: asyncpg.Connection) -> None:
    """PostGIS geometry as WKB bytes when the extension is installed (no codec library required)."""
    has_postgis = await conn.fetchval("SELECT true FROM pg_extension WHERE extname = 'postgis'")
    if has_postgis:
        await conn.set_type_codec("geometry", encoder=bytes, decoder=bytes, format="binary", schema="public")


async def run_postgres(ctx: ChildContext[Database], settings: PgSettings) -> None:
    emitter = DbEmitter(ctx, "db")
    pool = await open_pool(settings, emitter)
    db = Database(pool, settings, emitter)
    try:
        await db.detect_extensions()
        ctx.started(db)
        failures = 0
        while True:  # liveness: exit (and be restarted with backoff) when the server is gone
            await asyncio.sleep(settings.check_interval)
            try:
                await db.ping(min(settings.command_timeout, settings.check_interval * 2))
                failures = 0
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ServiceError) as e:
                failures += 1
                if failures >= settings.check_failures:
                    raise ServiceUnavailable(f"lost the database {settings.describe()}: {type(e).__name__}") from e
    finally:
        # graceful close (waits for checked-out connections), bounded by close_timeout and by what is left of the
        # child's shutdown budget (keeping a little for terminate); then terminate whatever is left
        budget = min(settings.close_timeout, ctx.cleanup_time_left(settings.close_timeout) * 0.8)
        try:
            await pool.close(budget)
        finally:
            pool.terminate()


def factory(settings: Mapping[str, Any]) -> WorkerFn:
    parsed = PgSettings(settings)

    async def run(ctx: ChildContext[Any]) -> None:
        await run_postgres(ctx, parsed)

    return run
