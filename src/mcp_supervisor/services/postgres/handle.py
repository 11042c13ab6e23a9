"""The postgres handle, ``Database``: an asyncpg pool with the seed's features done right.

- Settings from the child's ``config`` (the template fills them from POSTGRES_* via ``${VAR}``); in
  ``env = "prod"`` a missing host or password is a config error, never a silent default.
- The pool opens with bounded exponential backoff and a connect timeout; ready when ``SELECT 1`` answers; a
  liveness loop makes the worker exit (and be restarted with its backoff) when the server is gone.
- Every checkout has a timeout (exhaustion counted), every command a timeout, every query an event (SQL text,
  never its arguments).
- Tenants: ``async with db.tenant(tenant_id) as conn`` scopes ``search_path`` to the tenant's schema for one
  transaction with ``set_config(..., true)`` (``SET LOCAL``: pgbouncer-safe); ids are validated, names quoted.
- Our own pool (``pool.py``, lighter than asyncpg's): connections go back clean, without the reset round trip
  where the statements run cannot have left session state, with a fuller reset than asyncpg's everywhere else
  (``session.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Literal

import asyncpg

from ...core import describe
from ...core.clock import Deadline
from ...health.probe import ProbeResult, Status
from ..base import Emitter, ServiceUnavailable
from ..events import ServiceOperation
from .pool import Pool, PoolClosed
from .session import UNFINISHED, TrackedConnection, leaves_no_session_state
from .settings import PgSettings, PoolExhausted
from .tenancy import Tenancy
from .timescale import Timescale

# what a lost server or a pool closed under a query looks like
_CONNECTION_ERRORS = (
    OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError, PoolClosed,
)  # fmt: skip
_OPERATIONS = ("select", "insert", "update", "delete", "with", "create", "drop", "alter", "begin", "commit")


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
        finished = exc_type is None or not issubclass(exc_type, UNFINISHED)
        clean = self.db.skip_resets and tracked is not None and tracked.clean
        await self.db.pool.release(conn, finished=finished, clean=clean)


class Database(Tenancy, Timescale):
    """The concurrency-safe handle: share it between tasks; each call checks a connection out of the pool."""

    def __init__(self, pool: Pool, settings: PgSettings, emitter: DbEmitter) -> None:
        self.pool = pool
        self.skip_resets = settings.reset == "auto"
        self.settings = settings
        self._emit = emitter
        self.acquire_timeouts = 0
        self.extensions: dict[str, str] = {}

    # -- connections ---------------------------------------------------------------------------------------
    def tracked(self) -> _Checkout:
        """A checkout whose statements are judged: the connection goes back without a reset when none of them can
        have left session state (see ``session``)."""
        return _Checkout(self, track=True)

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
        session state (see ``session``)."""
        async with self.tracked() as conn, conn.transaction():
            yield conn

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


def _operation(sql: str) -> str:
    word = sql.lstrip().split(None, 1)[0].lower() if sql.strip() else "other"
    return word if word in _OPERATIONS else "other"


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
