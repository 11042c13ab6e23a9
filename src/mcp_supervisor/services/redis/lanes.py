"""Pipelined command lanes for the redis handle: a few connections, each sending whatever commands are waiting as
one pipeline.

redis-py's ``Redis.execute_command`` takes a connection from the pool, wraps the call in retry, timeout and
observability layers, and gives the connection back — per command. The cache's commands are single, independent
and (but for the pub/sub connection) never blocking, so they can share connections: each lane is a task that owns
one redis-py connection; callers queue ``(command, future)``; an idle lane takes everything queued (up to
``MAX_BATCH``), writes it in one go and reads the replies in order. Alone, a command goes out at once; under load,
commands that arrive during a round trip travel together in the next one.

- A caller that is cancelled, or stops waiting, only abandons its reply: the lane reads it and drops it.
- A Redis error reply fails that command alone.
- A connection error or a read timeout (``socket_timeout``) disconnects the lane's connection; the commands whose
  replies were not read are sent again on a new connection up to ``retries`` times (as redis-py's retry does), then
  fail with the error — or with ``LanesClosed`` when the lanes close meanwhile (never left waiting).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_BATCH = 512
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class LanesClosed(RedisConnectionError):
    """The lanes were closed (the service is stopping or restarting)."""


class Lanes:
    __slots__ = ("_closed", "_count", "_idle", "_pending", "_pool", "_retries", "_tasks", "batches", "commands")

    def __init__(self, pool: ConnectionPool, count: int, retries: int) -> None:
        self._pool = pool
        self._count = count
        self._retries = retries
        self._pending: collections.deque[tuple[tuple[Any, ...], asyncio.Future[Any]]] = collections.deque()
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.batches = 0  # statistics: round trips, and the commands they carried
        self.commands = 0

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._lane()) for _ in range(self._count)]

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future resolves to its reply (raw, as redis-py's connection parses it)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(LanesClosed("the redis connection lanes are closed"))
            return fut
        self._pending.append((args, fut))
        idle = self._idle
        while idle:
            lane = idle.popleft()
            if not lane.done():
                lane.set_result(None)
                break
        return fut

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while self._pending:
            _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(LanesClosed("the redis connection lanes are closed"))

    def _take(self) -> list[tuple[tuple[Any, ...], asyncio.Future[Any]]]:
        pending = self._pending
        batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        while pending and len(batch) < MAX_BATCH:
            item = pending.popleft()
            if not item[1].done():  # its caller gave up before it was sent: not sent at all
                batch.append(item)
        return batch

    async def _lane(self) -> None:
        loop = asyncio.get_running_loop()
        conn: Any = None
        batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        try:
            while True:
                if not self._pending:
                    wake: asyncio.Future[None] = loop.create_future()
                    self._idle.append(wake)
                    await wake
                    continue
                batch = self._take()
                if not batch:
                    continue
                attempt = 0
                while batch:
                    try:
                        if conn is None:
                            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                        batch = await self._send(conn, batch)
                    except _RETRYABLE as e:
                        if conn is not None:
                            await conn.disconnect(nowait=True)
                            await self._pool.release(conn)
                            conn = None
                        attempt += 1
                        if attempt > self._retries:
                            _fail(batch, e)
                            break
                        await asyncio.sleep(min(0.5, 0.01 * 2**attempt))
        finally:
            # taken but not answered (closed while it waited to send them again): they fail, never hang
            _fail(batch, LanesClosed("the redis connection lanes are closed"))
            if conn is not None:
                await self._pool.release(conn)

    async def _send(self, conn: Any, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> list[Any]:
        """Send ``batch`` as one pipeline and deliver the replies; returns what is left unanswered (empty: done).

        A connection error propagates; the commands not yet answered are the ones to send again."""
        await conn.send_packed_command(conn.pack_commands([args for args, _ in batch]), check_health=False)
        self.batches += 1
        self.commands += len(batch)
        for i, (_, fut) in enumerate(batch):
            try:
                reply = await conn.read_response()
            except ResponseError as e:
                if not fut.done():
                    fut.set_exception(e)
                continue
            except _RETRYABLE:
                del batch[:i]
                raise
            if not fut.done():
                fut.set_result(reply)
        return []


def _fail(batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)
