"""The redis handle's pipelined lanes against a real server: batching under load, replies never crossed, one bad
command fails alone, abandoned replies are skipped, a paused or dead server fails the waiting commands and the
lanes recover."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mcp_supervisor.services.redis.lanes import Lanes, LanesClosed
from mcp_supervisor.testing.servers import RedisServer


def make_pool(rds: RedisServer, socket_timeout: float | None = None) -> aioredis.BlockingConnectionPool:
    return aioredis.BlockingConnectionPool(
        host="127.0.0.1", port=rds.port, max_connections=4, timeout=2, socket_timeout=socket_timeout
    )


@pytest.fixture
async def lanes(rds: RedisServer) -> AsyncIterator[Lanes]:
    pool = make_pool(rds, socket_timeout=1.0)
    lanes = Lanes(pool, 2, retries=1)
    lanes.start()
    yield lanes
    await lanes.close()
    await pool.disconnect()


async def test_concurrent_commands_travel_together_and_replies_are_not_crossed(lanes: Lanes) -> None:
    await asyncio.gather(*(lanes.execute("SET", f"k{i}", f"v{i}") for i in range(1000)))
    replies = await asyncio.gather(*(lanes.execute("GET", f"k{i}") for i in range(1000)))
    assert replies == [f"v{i}".encode() for i in range(1000)]
    assert lanes.commands >= 2000 and lanes.batches < lanes.commands / 10  # pipelined, not one round trip each


async def test_an_error_reply_fails_only_its_command(lanes: Lanes) -> None:
    await lanes.execute("SET", "text", "not a number")
    results = await asyncio.gather(
        lanes.execute("SET", "a", "1"), lanes.execute("INCR", "text"), lanes.execute("GET", "a"),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] is True or results[0] == b"OK"
    assert isinstance(results[1], ResponseError) and "not an integer" in str(results[1])
    assert results[2] == b"1"


async def test_an_abandoned_reply_is_read_and_dropped(lanes: Lanes) -> None:
    await lanes.execute("SET", "x", "1")
    slow = lanes.execute("DEBUG", "SLEEP", "0.2")
    following = lanes.execute("GET", "x")  # queued behind it, maybe in the same batch
    slow.cancel()  # the caller gives up; the command may already be on the wire
    assert await following == b"1"
    assert [await lanes.execute("GET", "x") for _ in range(3)] == [b"1"] * 3  # no reply shifted by one


async def test_a_paused_server_times_the_waiting_commands_out_and_the_lanes_recover(
    lanes: Lanes, rds: RedisServer
) -> None:
    assert rds.proc is not None
    await lanes.execute("SET", "p", "1")
    os.kill(rds.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await asyncio.wait_for(lanes.execute("GET", "p"), 30)  # a hang guard; socket_timeout is 1 s
    finally:
        os.kill(rds.proc.pid, signal.SIGCONT)
    assert await lanes.execute("GET", "p") == b"1"


async def test_a_restarted_server_is_reached_again(lanes: Lanes, rds: RedisServer) -> None:
    assert await lanes.execute("PING") in (True, b"PONG")
    rds.kill()
    with pytest.raises((RedisConnectionError, OSError)):
        await asyncio.wait_for(lanes.execute("PING"), 30)
    rds.start()
    assert await asyncio.wait_for(lanes.execute("SET", "back", "1"), 30) in (True, b"OK")


async def test_closed_lanes_refuse_and_fail_what_waits(rds: RedisServer) -> None:
    pool = make_pool(rds)
    lanes = Lanes(pool, 1, retries=0)
    queued = lanes.execute("PING")  # not started: it waits
    await lanes.close()
    with pytest.raises(LanesClosed):
        await queued
    with pytest.raises(LanesClosed):
        await lanes.execute("PING")
    await pool.disconnect()


async def test_closing_fails_the_commands_a_lane_was_sending_again(rds: RedisServer) -> None:
    """The service stops while a lane waits to resend a batch to a dead server: its callers fail, never hang (a
    caller without a timeout of its own waited forever)."""
    pool = make_pool(rds, socket_timeout=1.0)
    lanes = Lanes(pool, 1, retries=1000)
    lanes.start()
    assert await lanes.execute("PING") in (True, b"PONG")
    rds.kill()
    inflight = lanes.execute("SET", "k", "v")
    with pytest.raises(TimeoutError):  # still being retried: taken by the lane, not answered
        await asyncio.wait_for(asyncio.shield(inflight), 0.3)
    await lanes.close()
    with pytest.raises(LanesClosed):
        await asyncio.wait_for(inflight, 10)
    await pool.disconnect()
