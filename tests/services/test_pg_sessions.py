"""Pooled connections go back clean: every kind of session state, left through every path of the handle, is gone
for the next user of the same connection — and the reset round trip is skipped only where nothing can remain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from mcp_supervisor.core import SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.services.postgres import Database, factory
from mcp_supervisor.services.postgres.session import leaves_no_session_state
from mcp_supervisor.testing.servers import PgServer

# What a fresh session looks like, read in one query by the next user of the connection.
SESSION = """
SELECT current_setting('work_mem') AS work_mem,
       current_setting('application_name') AS app,
       coalesce(current_setting('mcp.custom', true), '') AS custom,  -- once defined, RESET leaves ''
       current_user::text AS role,
       session_user::text AS session_role,
       current_setting('search_path') AS search_path,
       (SELECT count(*) FROM pg_listening_channels()) AS listening,
       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory,
       (SELECT count(*) FROM pg_class WHERE relpersistence = 't') AS temp_tables,
       (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) AS prepared,
       (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors,
       pg_backend_pid() AS pid
"""


@pytest.fixture
async def db(pg: PgServer) -> AsyncIterator[Database]:
    # one connection: the next user is certainly the same session
    spec = WorkerSpec(id="db", run=factory({**pg.settings, "pool_size": 1, "min_size": 1}))
    async with Tree(SupervisorSpec(id="root", children=[spec])) as tree:
        handle = await tree.handle("db", wait=10)
        assert isinstance(handle, Database)
        await handle.execute("DO $$BEGIN CREATE ROLE mcp_other NOLOGIN; EXCEPTION WHEN duplicate_object THEN END$$")
        yield handle


async def fresh(db: Database) -> dict[str, Any]:
    row = await db.fetchrow(SESSION)
    assert row is not None
    return dict(row)


async def one_shot(db: Database, sql: str) -> None:
    await db.execute(sql)


LEAVERS: dict[str, str] = {
    "SET": "SET work_mem = '77MB'",
    "SET application_name": "SET application_name = 'leaked'",
    "set_config(.., false)": "SELECT set_config('mcp.custom', 'leaked', false)",
    "SET ROLE": "SET ROLE mcp_other",
    "SET SESSION AUTHORIZATION": "SET SESSION AUTHORIZATION mcp_other",
    "LISTEN": "LISTEN leaked_channel",
    "advisory lock": "SELECT pg_advisory_lock(4242)",
    "temporary table": "CREATE TEMP TABLE leaked (x int)",
    "SELECT INTO TEMP": "SELECT 1 AS x INTO TEMP leaked_too",
    "PREPARE": "PREPARE leaked_stmt AS SELECT 1",
    "cursor WITH HOLD": "DECLARE leaked_cursor CURSOR WITH HOLD FOR SELECT 1",
    "search_path": "SET search_path = pg_catalog",
    "two statements": "SELECT 1; SET work_mem = '77MB'",
}


@pytest.mark.parametrize("what", sorted(LEAVERS))
async def test_state_left_by_a_one_shot_call_is_gone_for_the_next_user(db: Database, what: str) -> None:
    clean = await fresh(db)
    await one_shot(db, LEAVERS[what])
    after = await fresh(db)
    assert after == clean, f"{what} leaked: {after}"


def executing(sql: str) -> Callable[[Any], Awaitable[Any]]:
    return lambda conn: conn.execute(sql)


ACQUIRED: dict[str, Callable[[Any], Awaitable[Any]]] = {
    **{name: executing(sql) for name, sql in LEAVERS.items()},
    "add_listener": lambda conn: conn.add_listener("leaked_channel", lambda *a: None),
}


@pytest.mark.parametrize("path", ["acquire", "transaction", "tenant"])
@pytest.mark.parametrize("what", sorted(ACQUIRED))
async def test_state_left_on_a_checked_out_connection_is_gone_for_the_next_user(
    db: Database, path: str, what: str
) -> None:
    await db.create_tenant_schema("acme")
    clean = await fresh(db)
    ctx = db.acquire() if path == "acquire" else db.transaction() if path == "transaction" else db.tenant("acme")
    async with ctx as conn:
        await ACQUIRED[what](conn)
    after = await fresh(db)
    assert after == clean, f"{what} through {path} leaked: {after}"


async def test_an_aborted_transaction_is_rolled_back_before_the_next_user(db: Database) -> None:
    clean = await fresh(db)
    async with db.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("SET LOCAL work_mem = '77MB'")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.execute("SELECT 1/0")
    assert await fresh(db) == clean
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with db.tenant("acme") as conn:
            await conn.execute("SELECT 1/0")
    assert await fresh(db) == clean
    assert await db.fetchval("SELECT 1") == 1  # the connection is usable


async def test_a_failed_statement_through_tenant_keeps_the_fast_path_and_the_data(db: Database) -> None:
    await db.create_tenant_schema("acme")
    async with db.tenant("acme") as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
    await db.execute("TRUNCATE tenant_acme.t")
    before = db.pool.resets_skipped
    async with db.tenant("acme") as conn:
        await conn.execute("INSERT INTO t VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM t") == 1
    assert db.pool.resets_skipped == before + 1  # nothing could remain: no reset round trip
    assert await db.fetchval("SELECT count(*) FROM tenant_acme.t") == 1
    assert await db.fetchval("SELECT current_setting('search_path')") == '"$user", public'


async def test_safe_statements_skip_the_reset_and_others_do_not(db: Database) -> None:
    before = db.pool.resets_skipped
    for _ in range(5):
        await db.fetchval("SELECT 1")
    assert db.pool.resets_skipped == before + 5
    await db.execute("SET work_mem = '64MB'")
    assert db.pool.resets_skipped == before + 5  # reset, not skipped
    async with db.acquire() as conn:
        await conn.fetchval("SELECT 1")
    assert db.pool.resets_skipped == before + 5  # acquire() always resets


async def test_reset_always_never_skips(pg: PgServer) -> None:
    spec = WorkerSpec(id="db", run=factory({**pg.settings, "pool_size": 1, "min_size": 1, "reset": "always"}))
    async with Tree(SupervisorSpec(id="root", children=[spec])) as tree:
        db = await tree.handle("db", wait=10)
        assert isinstance(db, Database)
        for _ in range(3):
            await db.fetchval("SELECT 1")
        assert db.pool.resets_skipped == 0


@pytest.mark.parametrize(
    ("sql", "safe"),
    [
        ("SELECT id, name FROM bench WHERE id = $1", True),
        ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a RETURNING *", True),
        ("SELECT 'SET x = 1; LISTEN y' AS text_only", True),
        ("SELECT $$; SET x$$", True),
        ("SELECT pg_advisory_xact_lock(1)", True),  # released at commit
        ("SELECT \"set_config\"('a.b', 'c', false)", False),
        ("select pg_catalog.set_config('a.b', 'c', false)", False),
        ("SELECT 1 /* unterminated", False),
        ("SELECT E'it\\'s'; SET x = 1", False),
        ("", False),
    ],
)
def test_the_statement_judge(sql: str, safe: bool) -> None:
    assert leaves_no_session_state(sql) is safe
    for what, leaver in LEAVERS.items():
        assert not leaves_no_session_state(leaver), what


async def test_nested_blocks_in_a_tenant_are_savepoints(db: Database) -> None:
    await db.create_tenant_schema("acme")
    async with db.tenant("acme") as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS sp (v int)")
        await conn.execute("TRUNCATE sp")
    async with db.tenant("acme") as conn:
        await conn.execute("INSERT INTO sp VALUES (1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("INSERT INTO sp VALUES (2)")
                raise asyncpg.UniqueViolationError("rolled back to the savepoint")
        async with conn.transaction():
            await conn.execute("INSERT INTO sp VALUES (3)")
        with pytest.raises(asyncpg.InterfaceError, match="savepoint"):
            conn.transaction(isolation="serializable")
    assert [r["v"] for r in await db.fetch("SELECT v FROM tenant_acme.sp ORDER BY v")] == [1, 3]


async def test_an_exception_in_a_tenant_block_rolls_back(db: Database) -> None:
    await db.create_tenant_schema("acme")
    async with db.tenant("acme") as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS rb (v int)")
        await conn.execute("TRUNCATE rb")
    with pytest.raises(ValueError, match="changed my mind"):
        async with db.tenant("acme") as conn:
            await conn.execute("INSERT INTO rb VALUES (1)")
            raise ValueError("changed my mind")
    assert await db.fetchval("SELECT count(*) FROM tenant_acme.rb") == 0
    async with db.acquire() as conn:  # the one connection is usable and not left in a transaction
        assert not conn.is_in_transaction() and await conn.fetchval("SELECT 1") == 1
