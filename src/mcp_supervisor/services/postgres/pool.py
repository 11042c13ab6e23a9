"""A small connection pool for the postgres handle, in place of asyncpg's.

asyncpg's pool is general and pays for it on every checkout: a proxy object, a shielded task per release, a timer
per connection, and a reset round trip after every use. Measured at 50 tasks on 10 connections, a plain queue of
connections does 1.8 times the work of that pool even when its reset is switched off. This pool is that queue
plus what production needs:

- at most ``max_size`` connections, ``min_size`` opened at start; more are opened on demand, one per waiting
  task, and a connection that died is replaced by the next task that needs one;
- waiters are served first come, first served, and a task cancelled while it waits never loses a connection;
- a connection comes back **clean**: the caller says whether what it ran can have left session state
  (``session``); if it can, the connection is reset (one round trip: rollback, then ``session.RESET_SQL``)
  before anyone else gets it;
- a connection whose last operation did not finish (cancelled, timed out, or lost) is closed, never reused: what
  it was doing on the server is unknown;
- ``close()`` waits for checked-out connections up to a budget, then terminates what is left.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .session import RESET_SQL


class PoolClosed(Exception):
    """The pool was closed (the service is stopping or restarting)."""


class Connection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no type information
    """asyncpg's connection with our reset query: ``reset()`` then cleans everything in one round trip."""

    def get_reset_query(self) -> str:
        return RESET_SQL


class Pool:
    """Connections for one database; share it between tasks (see the module docstring)."""

    __slots__ = ("_closed", "_connect", "_idle", "_in_use", "_released", "_size", "_waiters", "max_size", "min_size",
                 "replaced", "reset_timeout", "resets", "resets_skipped")  # fmt: skip

    def __init__(
        self, connect: Callable[[], Awaitable[Any]], min_size: int, max_size: int, reset_timeout: float = 10.0
    ) -> None:
        self._connect = connect
        self.min_size = min_size
        self.max_size = max_size
        self.reset_timeout = reset_timeout
        self._idle: collections.deque[Any] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._size = 0  # open connections plus connections being opened
        self._in_use: set[Any] = set()
        self._released: asyncio.Event | None = None
        self._closed = False
        self.resets = 0
        self.resets_skipped = 0
        self.replaced = 0  # connections closed after an unfinished operation, or found dead

    async def start(self) -> None:
        self._size += self.min_size
        results = await asyncio.gather(*(self._connect() for _ in range(self.min_size)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for conn in results:
            if not isinstance(conn, BaseException):
                self._idle.append(conn)
        if failed:
            await self.close(0)
            raise failed[0]

    # -- statistics --------------------------------------------------------------------------------------------
    def get_size(self) -> int:
        return self._size

    def get_idle_size(self) -> int:
        return len(self._idle)

    def get_max_size(self) -> int:
        return self.max_size

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    # -- checkout ----------------------------------------------------------------------------------------------
    async def acquire(self) -> Any:
        """A connection for the caller alone; give it back with :meth:`release`. Waits while all are in use."""
        if self._closed:
            raise PoolClosed("the connection pool is closed")
        idle = self._idle
        while idle:
            conn = idle.pop()  # the most recently used: warm caches, and idle ones age out together
            if not conn.is_closed():
                self._in_use.add(conn)
                return conn
            self._gone()
        if self._size < self.max_size:
            self._size += 1
            return await self._open()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over just as we were cancelled: pass it on
                self._hand_back(waiter.result())
            raise
        if conn is None:  # a free slot rather than a connection: open one
            return await self._open()
        self._in_use.add(conn)
        return conn

    async def _open(self) -> Any:
        """Open a connection into a slot already counted in ``_size``."""
        try:
            conn = await self._connect()
        except BaseException:
            self._gone()
            raise
        if self._closed:
            conn.terminate()
            self._gone()
            raise PoolClosed("the connection pool is closed")
        self._in_use.add(conn)
        return conn

    async def release(self, conn: Any, *, finished: bool, clean: bool) -> None:
        """Give ``conn`` back. ``finished``: its last operation completed (the server answered); ``clean``: nothing
        run on it can have left session state. Unfinished: closed. Finished but not clean: reset first.

        Never raises, except CancelledError: a connection that cannot be reset is closed and replaced."""
        if conn not in self._in_use:  # terminated by close() meanwhile
            if not conn.is_closed():
                conn.terminate()
            return
        self._in_use.discard(conn)
        if self._released is not None:
            self._released.set()
        if conn.is_closed() or not finished or self._closed:
            if not conn.is_closed():
                conn.terminate()
            self.replaced += not self._closed
            self._gone()
            return
        if clean:
            self.resets_skipped += 1
            self._hand_back(conn)
            return
        self.resets += 1
        try:
            await conn.reset(timeout=self.reset_timeout)
        except BaseException as e:
            conn.terminate()
            self.replaced += 1
            self._gone()
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        self._hand_back(conn)

    def _hand_back(self, conn: Any) -> None:
        """To the first task still waiting, else to the idle list (``conn`` is None: a free slot)."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is None:
            self._size -= 1
        elif self._closed:
            conn.terminate()
            self._size -= 1
        else:
            self._idle.append(conn)

    def _gone(self) -> None:
        """A connection (or a slot being opened) is gone: its slot goes to a waiter, who opens a new one."""
        self._size -= 1
        if self._waiters and not self._closed:
            self._size += 1
            self._hand_back(None)

    # -- shutdown ----------------------------------------------------------------------------------------------
    async def close(self, timeout: float) -> None:
        """Refuse new checkouts, wait up to ``timeout`` s for checked-out connections, then terminate them all."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed("the connection pool is closed"))
        self._waiters.clear()
        idle, self._idle = list(self._idle), collections.deque()
        await asyncio.gather(*(_close(c, timeout) for c in idle))
        self._size -= len(idle)
        if self._in_use and timeout > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            self._released = asyncio.Event()
            while self._in_use and loop.time() < deadline:
                self._released.clear()
                try:
                    async with asyncio.timeout(deadline - loop.time()):
                        await self._released.wait()
                except TimeoutError:
                    break
        self.terminate()

    def terminate(self) -> None:
        """Close every connection at once (checked out or not)."""
        self._closed = True
        for conn in [*self._idle, *self._in_use]:
            if not conn.is_closed():
                conn.terminate()
        self._size -= len(self._idle) + len(self._in_use)
        self._idle.clear()
        self._in_use.clear()


async def _close(conn: Any, timeout: float) -> None:
    try:
        await conn.close(timeout=max(timeout, 0.1))
    except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing is best effort; terminate is the fallback
        conn.terminate()
