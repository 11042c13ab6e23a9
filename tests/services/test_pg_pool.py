"""The postgres handle's own connection pool against a real server: bounded, fair, nothing lost to cancellation,
unknown connections never reused, a bounded close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from mcp_supervisor.services.postgres.pool import Connection, Pool, PoolClosed
from mcp_supervisor.testing import until
from mcp_supervisor.testing.servers import PgServer


@pytest.fixture
async def pool(pg: PgServer) -> AsyncIterator[Pool]:
    async def connect() -> Any:
        return await asyncpg.connect(
            host="127.0.0.1", port=pg.port, user="postgres", database="postgres", connection_class=Connection
        )

    p = Pool(connect, min_size=1, max_size=2)
    await p.start()
    yield p
    await p.close(1.0)


async def pid(conn: Any) -> int:
    value: int = await conn.fetchval("SELECT pg_backend_pid()")
    return value


async def test_connections_are_bounded_and_waiters_served_in_order(pool: Pool) -> None:
    a, b = await pool.acquire(), await pool.acquire()
    assert pool.get_size() == 2
    order: list[str] = []

    async def wait(name: str) -> None:
        conn = await pool.acquire()
        order.append(name)
        await pool.release(conn, finished=True, clean=True)

    waiters = [asyncio.ensure_future(wait(n)) for n in "xyz"]
    await until(lambda: pool.waiting == 3)
    assert pool.get_size() == 2  # nobody opened a third
    await pool.release(a, finished=True, clean=True)
    await pool.release(b, finished=True, clean=True)
    await asyncio.gather(*waiters)
    assert order == ["x", "y", "z"]


async def test_a_waiter_cancelled_as_it_is_served_does_not_lose_the_connection(pool: Pool) -> None:
    a, b = await pool.acquire(), await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire())
    await until(lambda: pool.waiting == 1)
    await pool.release(a, finished=True, clean=True)  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.get_idle_size() == 1  # the connection went back, not lost
    again = await pool.acquire()
    assert again is a
    await pool.release(again, finished=True, clean=True)
    await pool.release(b, finished=True, clean=True)
    assert (pool.get_size(), pool.get_idle_size()) == (2, 2)


async def test_an_unfinished_operation_closes_the_connection_and_a_new_one_replaces_it(pool: Pool) -> None:
    conn = await pool.acquire()
    first = await pid(conn)
    query = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.05)  # let the query reach the server (not a wait for a result: either way is tested)
    query.cancel()
    with pytest.raises(asyncio.CancelledError):
        await query
    await pool.release(conn, finished=False, clean=False)
    assert conn.is_closed() and pool.replaced == 1 and pool.get_size() == 0
    fresh = await pool.acquire()
    assert await pid(fresh) != first and not fresh.is_in_transaction()
    await pool.release(fresh, finished=True, clean=True)


async def test_a_dead_connection_is_replaced_on_the_next_checkout(pool: Pool, pg: PgServer) -> None:
    conn = await pool.acquire()
    victim = await pid(conn)
    await pool.release(conn, finished=True, clean=True)
    killer = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="postgres", database="postgres")
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", victim)
    finally:
        await killer.close()
    await until(conn.is_closed, what="the client to see the server close the connection")
    again = await pool.acquire()
    assert again is not conn and await again.fetchval("SELECT 1") == 1 and await pid(again) != victim
    assert pool.get_size() == 1
    await pool.release(again, finished=True, clean=True)


async def test_a_dirty_connection_is_reset_before_anyone_else_gets_it(pool: Pool) -> None:
    conn = await pool.acquire()
    await conn.execute("SET work_mem = '77MB'")
    await pool.release(conn, finished=True, clean=False)
    assert pool.resets == 1
    conn = await pool.acquire()
    assert await conn.fetchval("SHOW work_mem") == "4MB"
    await pool.release(conn, finished=True, clean=True)


async def test_close_waits_for_checked_out_connections_then_refuses(pool: Pool) -> None:
    conn = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire())
    extra = await waiter  # max_size 2: the waiter got a second connection at once
    blocked = asyncio.ensure_future(pool.acquire())
    await until(lambda: pool.waiting == 1)
    closing = asyncio.ensure_future(pool.close(30))
    with pytest.raises(PoolClosed):
        await blocked
    await pool.release(extra, finished=True, clean=True)
    assert not closing.done()  # still waiting for `conn`
    await pool.release(conn, finished=True, clean=True)
    await asyncio.wait_for(closing, 10)  # a hang guard: it finishes as soon as the last one is back
    assert conn.is_closed() and extra.is_closed() and pool.get_size() == 0
    with pytest.raises(PoolClosed):
        await pool.acquire()


async def test_close_terminates_what_is_not_given_back_in_time(pool: Pool) -> None:
    conn = await pool.acquire()
    await pool.close(0.05)
    assert conn.is_closed() and pool.get_size() == 0
    await pool.release(conn, finished=True, clean=True)  # late: harmless
    assert pool.get_size() == 0
