"""Session state on pooled PostgreSQL connections: what can leave some, and the query that removes all of it.

A pooled connection goes from one user to the next. asyncpg's pool cleans every connection it takes back with a
reset query — a full round trip, paid even after ``SELECT 1``, which halves throughput when tasks queue for
connections. The handle skips that round trip only where a statement provably leaves nothing behind, and otherwise
cleans more thoroughly than asyncpg does (which keeps ``SET ROLE``, temporary tables and ``PREPARE``d statements).

What a statement leaves behind is judged from its text, conservatively: one statement (no ``;`` inside), starting
with a data keyword (SELECT, INSERT, UPDATE, DELETE, WITH, VALUES, TABLE, MERGE), naming none of the built-in
functions that change the session (``set_config``, session-level advisory locks, dblink connections), no TEMP
object. Anything else — SET, LISTEN, PREPARE, DECLARE, BEGIN, DO, CALL, COPY, CREATE,
several statements, text that does not parse — is treated as leaving state. A function or trigger of the user's
own that changes the session from inside (``set_config(..., false)`` in a trigger) cannot be seen in the text: for
such code use ``acquire()``, whose connections are always cleaned, or the ``reset = "always"`` setting.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from typing import Any

import asyncpg

# One round trip (the simple query protocol runs them in order): everything a session can carry over.
# what can interrupt an operation before the server answered: the connection's state is then unknown
UNFINISHED = (asyncio.CancelledError, TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)
RESET_SQL = (
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; "
    "DISCARD TEMP; DISCARD SEQUENCES; "
    "DO $mcp_reset$DECLARE r record; BEGIN "
    "FOR r IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP "
    "EXECUTE format('DEALLOCATE %I', r.name); END LOOP; END$mcp_reset$"
)

_DATA = frozenset({"select", "insert", "update", "delete", "with", "values", "table", "merge"})
_SESSION_WORDS = re.compile(
    r"\b(set_config|pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|pg_try_advisory_lock_shared"
    r"|dblink_connect|dblink_connect_u|dblink_open|temp|temporary)\b"
)
# literals and comments, whose words do not count: '..' (with ''), E'..' (with \'), $tag$..$tag$, -- and /* */
# comments; "quoted identifiers" keep their text (a quoted name can still call set_config)
_SKIP = re.compile(
    r"""(?<![A-Za-z0-9_$])[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|"((?:[^"]|"")*)"|\$([A-Za-z_][A-Za-z_0-9]*|)\$.*?\$\2\$"""
    r"""|--[^\n]*|/\*.*?\*/""",
    re.S,
)
_UNCLOSED = re.compile(r"""['"]|\$[A-Za-z_0-9]*\$|/\*""")
_FIRST = re.compile(r"\s*\(*\s*([A-Za-z]+)")


def _blank(m: re.Match[str]) -> str:
    ident = m.group(1)
    return " " if ident is None else " " + ident.replace('""', '"').replace(";", " ").replace('"', " ") + " "


@functools.lru_cache(maxsize=4096)  # the same statements come back: judge each once
def leaves_no_session_state(sql: str) -> bool:
    """True only when ``sql`` certainly leaves nothing on the connection once it has finished (see above)."""
    code = _SKIP.sub(_blank, sql)
    if _UNCLOSED.search(code):  # an unterminated literal or comment: we cannot tell what it hides
        return False
    code = code.lower()
    if ";" in code.rstrip().rstrip(";"):
        return False
    first = _FIRST.match(code)
    if first is None or first.group(1) not in _DATA:
        return False
    return not _SESSION_WORDS.search(code)


class TrackedConnection:
    """A checked-out connection that judges every statement run through it (``session``): while all of them
    leave no session state, the connection goes back without the reset round trip. Anything else used on it —
    listeners, COPY, a setting — counts as leaving state."""

    __slots__ = ("_conn", "clean", "own_transaction")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.clean = True
        self.own_transaction = False  # opened by begin(): nested transaction() blocks are savepoints

    def _judge(self, query: str) -> None:
        if self.clean and not leaves_no_session_state(query):
            self.clean = False

    async def begin(self, local_settings: str) -> None:
        """``BEGIN`` and transaction-scoped settings in one round trip. ``local_settings``: trusted ``SET LOCAL``
        statements built by the handle (validated, quoted), never user input."""
        await self._conn.execute(f"BEGIN; {local_settings}")
        self.own_transaction = True

    async def end(self, commit: bool) -> None:
        """``COMMIT`` or ``ROLLBACK`` the transaction opened by :meth:`begin`."""
        self.own_transaction = False
        await self._conn.execute("COMMIT" if commit else "ROLLBACK")

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        self._judge(query)
        result: str = await self._conn.execute(query, *args, timeout=timeout)
        return result

    async def executemany(self, command: str, args: Any, *, timeout: float | None = None) -> None:
        self._judge(command)
        await self._conn.executemany(command, args, timeout=timeout)

    async def fetch(self, query: str, *args: Any, **kw: Any) -> list[asyncpg.Record]:
        self._judge(query)
        result: list[asyncpg.Record] = await self._conn.fetch(query, *args, **kw)
        return result

    async def fetchrow(self, query: str, *args: Any, **kw: Any) -> asyncpg.Record | None:
        self._judge(query)
        result: asyncpg.Record | None = await self._conn.fetchrow(query, *args, **kw)
        return result

    async def fetchval(self, query: str, *args: Any, **kw: Any) -> Any:
        self._judge(query)
        return await self._conn.fetchval(query, *args, **kw)

    async def fetchmany(self, query: str, args: Any, **kw: Any) -> list[asyncpg.Record]:
        self._judge(query)
        result: list[asyncpg.Record] = await self._conn.fetchmany(query, args, **kw)
        return result

    async def prepare(self, query: str, **kw: Any) -> Any:
        self._judge(query)
        return await self._conn.prepare(query, **kw)

    def cursor(self, query: str, *args: Any, **kw: Any) -> Any:
        self._judge(query)
        return self._conn.cursor(query, *args, **kw)

    def transaction(self, **kw: Any) -> Any:
        """A transaction block; inside the handle's own transaction, a savepoint (as asyncpg nests them).
        Transactions and savepoints leave nothing behind."""
        if not self.own_transaction:
            return self._conn.transaction(**kw)
        if kw:
            raise asyncpg.InterfaceError(
                f"this block is already a transaction: a nested one is a savepoint and takes no options ({kw})"
            )
        return Savepoint(self._conn)

    def is_in_transaction(self) -> bool:
        return bool(self._conn.is_in_transaction())

    def __getattr__(self, name: str) -> Any:
        self.clean = False  # not judged: assume it leaves something (add_listener, copy_*, set_type_codec, ...)
        return getattr(self._conn, name)


class Savepoint:
    """A nested transaction block (``SAVEPOINT``), with asyncpg's Transaction interface."""

    __slots__ = ("_conn", "name")
    _serial = itertools.count(1)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.name = f"mcp_savepoint_{next(self._serial)}"

    async def start(self) -> None:
        await self._conn.execute(f"SAVEPOINT {self.name}")

    async def commit(self) -> None:
        await self._conn.execute(f"RELEASE SAVEPOINT {self.name}")

    async def rollback(self) -> None:
        await self._conn.execute(f"ROLLBACK TO SAVEPOINT {self.name}")

    async def __aenter__(self) -> Savepoint:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            await self.commit()
        elif not issubclass(exc_type, asyncio.CancelledError | TimeoutError | OSError):  # else: the pool closes it
            await self.rollback()
