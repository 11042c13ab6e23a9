"""``worker = "postgres"``: an asyncpg pool with the seed's features done right (SERVICES.md §1).

- Settings from the child's ``config`` (the template fills them from POSTGRES_* via ``${VAR}``); in
  ``env = "prod"`` a missing host or password is a config error, never a silent default.
- The pool opens with bounded exponential backoff and a connect timeout; ready when ``SELECT 1`` answers; a
  liveness loop makes the worker exit (and be restarted with its backoff) when the server is gone.
- Every checkout has a timeout (exhaustion counted), every command a timeout, every query an event (SQL text,
  never its arguments).
- Tenants: ``async with db.tenant(tenant_id) as conn`` scopes ``search_path`` to the tenant's schema for one
  transaction with ``set_config(..., true)`` (``SET LOCAL``: pgbouncer-safe); ids are validated, names quoted.
- Our own pool (``pgpool.py``, lighter than asyncpg's): connections go back clean, without the reset round trip
  where the statements run cannot have left session state, with a fuller reset than asyncpg's everywhere else
  (``pgsession.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any, Literal

import asyncpg

from ..core import ChildContext, Deadline, WorkerFn, describe
from ..probe import ProbeResult, Status
from ..settings import Settings, read_secret_file
from .base import Emitter, ServiceError, ServiceUnavailable, retry_connect
from .events import ServiceOperation
from .pgpool import Connection, Pool, PoolClosed
from .pgsession import TrackedConnection, leaves_no_session_state

POOL_BY_ENV = {"prod": 20, "test": 1, "dev": 10}
SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
_TENANT_ID = re.compile(r"^[a-z0-9_]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# what a lost server or a pool closed under a query looks like
_CONNECTION_ERRORS = (
    OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError, PoolClosed,
)  # fmt: skip
# what can interrupt an operation before the server answered: the connection's state is then unknown
_UNFINISHED = (asyncio.CancelledError, TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)
_OPERATIONS = ("select", "insert", "update", "delete", "with", "create", "drop", "alter", "begin", "commit")


class PoolExhausted(ServiceError):
    """No connection became free within ``acquire_timeout``."""


class TenantError(ServiceError, ValueError):
    """An invalid tenant id (the schema name would be unsafe or truncated)."""


class ExtensionMissing(ServiceError):
    """A feature needs a PostgreSQL extension that is not installed."""


def quote_ident(name: str) -> str:
    """Quote an identifier exactly as PostgreSQL's ``quote_ident`` does."""
    return '"' + name.replace('"', '""') + '"'


def tenant_schema(tenant_id: str) -> str:
    """``tenant_<id>``: ids are ``[a-z0-9_]`` (a UUID's ``-`` becomes ``_``); the name must fit 63 bytes."""
    if not isinstance(tenant_id, str):
        raise TenantError(f"tenant id must be a string, got {type(tenant_id).__name__}")
    tid = tenant_id.strip().lower().replace("-", "_")
    if not tid or not _TENANT_ID.match(tid):
        raise TenantError(f"invalid tenant id {tenant_id!r}: use letters, digits, '_' or a UUID")
    schema = f"tenant_{tid}"
    if len(schema.encode()) > 63:
        raise TenantError(f"tenant id {tenant_id!r} is too long: the schema name would exceed 63 bytes")
    return schema


def _qualified(name: str) -> str:
    """A possibly schema-qualified table name, each part validated and quoted."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"invalid table name {name!r}: use identifiers like schema.table")
    return ".".join(quote_ident(p) for p in parts)


SETTINGS_KEYS = frozenset({
    "host", "port", "user", "password", "password_file", "database", "sslmode", "ssl_ca", "env",
    "pool_size", "min_size", "connect_timeout", "command_timeout", "acquire_timeout", "statement_cache_size",
    "pgbouncer", "connect_attempts", "check_interval", "check_failures", "close_timeout", "query_events", "reset",
})  # fmt: skip
"""Every key of this worker's ``config`` table."""


class PgSettings:
    def __init__(self, table: Mapping[str, Any]) -> None:
        s = Settings(table, SETTINGS_KEYS)
        self.env = s.text("env", "dev", ("prod", "test", "dev")) or "dev"
        self.host = s.text("host") or None
        self.port = s.port("port", 5432)
        self.user = s.text("user") or "postgres"
        password = s.text("password") or None
        password_file = s.text("password_file") or None
        if password_file:
            password = read_secret_file("password_file", password_file)
        self.password = password
        self.database = s.text("database") or "mcp_dev"
        if self.env == "prod":
            if not self.host:
                raise s.error("host", "required when env = prod (no silent localhost default)")
            if not self.password:
                raise s.error("password", "required when env = prod (set password or password_file)")
        self.host = self.host or "localhost"
        self.sslmode = s.text("sslmode", "prefer", SSLMODES) or "prefer"
        self.ssl_ca = s.text("ssl_ca") or None
        default_pool = POOL_BY_ENV[self.env]
        self.pool_size = s.integer("pool_size", default_pool, 1, 1000)
        self.min_size = min(s.integer("min_size", min(self.pool_size, 2), 0, 1000), self.pool_size)
        self.connect_timeout = s.seconds("connect_timeout", 5.0, 0.1)
        # the server's statement_timeout is an int32 of milliseconds: a day fits
        self.command_timeout = s.seconds("command_timeout", 30.0, 0.01)
        self.acquire_timeout = s.seconds("acquire_timeout", 5.0, 0.01)
        self.pgbouncer = s.boolean("pgbouncer", False)
        self.statement_cache_size = 0 if self.pgbouncer else s.integer("statement_cache_size", 100, 0, 100_000)
        self.connect_attempts = s.integer("connect_attempts", 5, 1, 1000)
        self.check_interval = s.seconds("check_interval", 2.0, 0.05)
        self.check_failures = s.integer("check_failures", 2, 1, 1000)
        self.close_timeout = s.seconds("close_timeout", 2.0, 0.0)
        self.query_events = s.text("query_events", "handle", ("handle", "all")) or "handle"
        # "auto": skip the reset round trip after statements that cannot leave session state; "always": never skip
        self.reset = s.text("reset", "auto", ("auto", "always")) or "auto"

    def ssl(self) -> Any:
        if self.sslmode in ("verify-ca", "verify-full"):
            ctx = ssl.create_default_context(cafile=self.ssl_ca)
            ctx.check_hostname = self.sslmode == "verify-full"
            return ctx
        return self.sslmode

    def describe(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"  # never the password


class _Checkout:
    __slots__ = ("conn", "db", "track", "tracked")

    def __init__(self, db: Database, track: bool = False) -> None:
        self.db = db
        self.track = track
        self.conn: asyncpg.Connection | None = None
        self.tracked: TrackedConnection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self.conn = conn = await self.db.checkout()
        if self.track:
            self.tracked = TrackedConnection(conn)
            return self.tracked
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        conn, tracked = self.conn, self.tracked
        if conn is None:
            return
        self.conn = self.tracked = None
        # a server-side error leaves the session as its statements left it; a cancelled or timed-out query, or a
        # lost connection, leaves it unknown
        finished = exc_type is None or not issubclass(exc_type, _UNFINISHED)
        clean = self.db.skip_resets and tracked is not None and tracked.clean
        await self.db.pool.release(conn, finished=finished, clean=clean)


class Database:
    """The concurrency-safe handle: share it between tasks; each call checks a connection out of the pool."""

    def __init__(self, pool: Pool, settings: PgSettings, emitter: DbEmitter) -> None:
        self.pool = pool
        self.skip_resets = settings.reset == "auto"
        self.settings = settings
        self._emit = emitter
        self.acquire_timeouts = 0
        self.extensions: dict[str, str] = {}

    # -- connections ---------------------------------------------------------------------------------------
    def acquire(self) -> _Checkout:
        """``async with db.acquire() as conn``: a connection for several statements, fully reset when released."""
        return _Checkout(self)

    async def checkout(self) -> asyncpg.Connection:
        """A connection from the pool within ``acquire_timeout`` (PoolExhausted after it); release it."""
        # not acquire(timeout=), which wraps every checkout in a new task (wait_for), nor a timer per checkout:
        # a Deadline served by the loop's sweeper
        deadline = Deadline()
        deadline.arm(self.settings.acquire_timeout)
        try:
            return await self.pool.acquire()
        except asyncio.CancelledError:
            if not deadline.expired_here():
                raise
            self.acquire_timeouts += 1
            self._emit.op("acquire", time.perf_counter() - self.settings.acquire_timeout, "timeout")
            raise PoolExhausted(
                f"no database connection free within {self.settings.acquire_timeout:g}s "
                f"(pool size {self.settings.pool_size})"
            ) from None
        except PoolClosed:
            raise ServiceUnavailable(f"database {self.settings.describe()} is closing") from None
        except _CONNECTION_ERRORS as e:
            raise ServiceUnavailable(f"database {self.settings.describe()} is unreachable: {describe(e)}") from e
        finally:
            deadline.disarm()

    async def _run(self, method: str, sql: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        conn = await self.checkout()
        limit = timeout or self.settings.command_timeout
        finished = False  # the server answered, with rows or an error: the session is as the statement left it
        try:  # the client-side deadline also bounds a server that stopped answering
            result = await self._emit.measure(
                _operation(sql), getattr(conn, method)(sql, *args), partial(self._fail, limit), timeout=limit,
                statement=sql[:1000],
            )  # fmt: skip
            finished = True
            return result
        except asyncpg.PostgresError:
            finished = True
            raise
        finally:
            clean = finished and self.skip_resets and leaves_no_session_state(sql)
            await self.pool.release(conn, finished=finished, clean=clean)

    def _fail(self, limit: float, e: Exception) -> Exception:
        if isinstance(e, TimeoutError):
            return TimeoutError(f"query did not finish within {limit:g}s (cancelled on the server)")
        if isinstance(e, asyncpg.QueryCanceledError) and "statement timeout" in str(e):
            return TimeoutError(f"query did not finish within {limit:g}s (statement_timeout)")
        if isinstance(e, _CONNECTION_ERRORS):
            return ServiceUnavailable(f"database connection lost: {describe(e)}")
        return e

    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        result: list[asyncpg.Record] = await self._run("fetch", sql, args, timeout)
        return result

    async def fetchrow(self, sql: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        result: asyncpg.Record | None = await self._run("fetchrow", sql, args, timeout)
        return result

    async def fetchval(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run("fetchval", sql, args, timeout)

    async def execute(self, sql: str, *args: Any, timeout: float | None = None) -> str:
        result: str = await self._run("execute", sql, args, timeout)
        return result

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One transaction on one connection; it goes back without a reset when nothing run on it can have left
        session state (see ``pgsession``)."""
        async with _Checkout(self, track=True) as conn, conn.transaction():
            yield conn

    # -- tenants -------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def tenant(self, tenant_id: str) -> AsyncIterator[asyncpg.Connection]:
        """One transaction whose ``search_path`` is the tenant's schema (then public)."""
        schema = tenant_schema(tenant_id)
        async with _Checkout(self, track=True) as conn:
            # BEGIN and SET LOCAL in one round trip; the schema name is validated and quoted
            await conn.begin(f"SET LOCAL search_path TO {quote_ident(schema)}, public")
            try:
                yield conn
            except BaseException as e:
                if not isinstance(e, _UNFINISHED):  # after an unfinished query the pool closes the connection
                    await conn.end(commit=False)
                raise
            await conn.end(commit=True)

    async def create_tenant_schema(self, tenant_id: str) -> str:
        schema = tenant_schema(tenant_id)
        await self.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        return schema

    async def drop_tenant_schema(self, tenant_id: str, cascade: bool = False) -> None:
        schema = tenant_schema(tenant_id)
        await self.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)}{' CASCADE' if cascade else ''}")

    # -- extensions ----------------------------------------------------------------------------------------
    async def detect_extensions(self) -> dict[str, str]:
        rows = await self.fetch("SELECT extname, extversion FROM pg_extension")
        self.extensions = {r["extname"]: r["extversion"] for r in rows}
        return self.extensions

    async def create_hypertable(
        self, table: str, time_column: str, chunk_interval: str | dt.timedelta = "7 days"
    ) -> None:
        """TimescaleDB ``create_hypertable(..., by_range(...), if_not_exists => TRUE)``: parameterised, idempotent."""
        if "timescaledb" not in await self.detect_extensions():
            raise ExtensionMissing(
                "create_hypertable needs the timescaledb extension, which is not installed in "
                f"{self.settings.database!r} (CREATE EXTENSION timescaledb, on a server that has it)"
            )
        if not _IDENT.match(time_column):
            raise ValueError(f"invalid time column {time_column!r}")
        await self.execute(
            f"SELECT create_hypertable($1::regclass, by_range($2, {_interval_param(chunk_interval, 3)}), "
            "if_not_exists => TRUE)",
            _qualified(table),
            time_column,
            chunk_interval,
        )

    # -- soft deletes (AshArchival) ------------------------------------------------------------------------
    async def enable_archival(self, table: str, unique: tuple[str, ...] = ()) -> None:
        """Add ``archived_at``, a view of live rows (``<table>_active``) and partial unique indexes."""
        q = _qualified(table)
        base = table.rsplit(".", maxsplit=1)[-1]
        async with self.transaction() as conn:
            await conn.execute(f"ALTER TABLE {q} ADD COLUMN IF NOT EXISTS archived_at timestamptz")
            view = _qualified(f"{table}_active")
            await conn.execute(f"CREATE OR REPLACE VIEW {view} WITH (security_invoker = true) AS "
                               f"SELECT * FROM {q} WHERE archived_at IS NULL")  # fmt: skip
            if unique:
                if not all(_IDENT.match(c) for c in unique):
                    raise ValueError(f"invalid column in {unique!r}")
                cols = ", ".join(quote_ident(c) for c in unique)
                index = quote_ident(f"{base}_{'_'.join(unique)}_live_key")
                await conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {q} ({cols}) "
                                   "WHERE archived_at IS NULL")  # fmt: skip

    async def archive(self, table: str, key: Any, key_column: str = "id") -> bool:
        return await self._set_archived(table, key, key_column, "now()")

    async def restore(self, table: str, key: Any, key_column: str = "id") -> bool:
        return await self._set_archived(table, key, key_column, "NULL")

    async def _set_archived(self, table: str, key: Any, key_column: str, value: str) -> bool:
        if not _IDENT.match(key_column):
            raise ValueError(f"invalid key column {key_column!r}")
        cond = "archived_at IS NULL" if value != "NULL" else "archived_at IS NOT NULL"
        status = await self.execute(
            f"UPDATE {_qualified(table)} SET archived_at = {value} WHERE {quote_ident(key_column)} = $1 AND {cond}", key
        )
        return status.endswith(" 1")

    async def purge(self, table: str, older_than: str | dt.timedelta = "30 days") -> int:
        """Hard-delete rows archived more than ``older_than`` ago (``"30 days"`` or a timedelta)."""
        status = await self.execute(
            f"DELETE FROM {_qualified(table)} WHERE archived_at < now() - {_interval_param(older_than)}", older_than
        )
        return int(status.split()[-1])

    # -- health --------------------------------------------------------------------------------------------
    async def ping(self, timeout: float) -> None:
        """``SELECT 1`` without an event (the worker's liveness loop)."""
        conn = await self.checkout()
        finished = False
        try:
            await conn.fetchval("SELECT 1", timeout=timeout)
            finished = True
        finally:
            await self.pool.release(conn, finished=finished, clean=finished and self.skip_resets)

    def stats(self) -> dict[str, int]:
        size, idle = self.pool.get_size(), self.pool.get_idle_size()
        return {"size": size, "idle": idle, "used": size - idle, "max": self.pool.get_max_size(),
                "acquire_timeouts": self.acquire_timeouts}  # fmt: skip

    async def probe(self) -> ProbeResult | None:
        await self.fetchval("SELECT 1", timeout=self.settings.command_timeout)
        st = self.stats()
        status: Status = "warn" if st["idle"] == 0 and st["size"] >= st["max"] else "pass"
        return ProbeResult(status=status, observed_value=st["used"], observed_unit="connections",
                           measurement="connections", component_type="datastore",
                           output="pool exhausted" if status == "warn" else "")  # fmt: skip


def _interval_param(value: str | dt.timedelta, n: int = 1) -> str:
    """A parameter placeholder for an interval given as text (``'30 days'``) or as a timedelta."""
    return f"${n}::interval" if isinstance(value, dt.timedelta) else f"${n}::text::interval"


def _operation(sql: str) -> str:
    word = sql.lstrip().split(None, 1)[0].lower() if sql.strip() else "other"
    return word if word in _OPERATIONS else "other"


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


class DbEmitter(Emitter):
    """Query events: SQL text and duration, never the arguments."""

    def logged(self, q: Any) -> None:
        """asyncpg query logger (``query_events = "all"``): also the queries run on checked-out connections."""
        if not self.active:
            return
        outcome: Literal["ok", "error", "timeout"] = "ok"
        if q.exception is not None:
            outcome = "timeout" if isinstance(q.exception, TimeoutError) else "error"
        self.emit(ServiceOperation(path=self.path, service="db", operation=_operation(q.query),
                                   outcome=outcome, duration_s=q.elapsed, statement=q.query[:1000]))  # fmt: skip


async def run_postgres(ctx: ChildContext, settings: PgSettings) -> None:
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

    async def run(ctx: ChildContext) -> None:
        await run_postgres(ctx, parsed)

    return run
