"""The redis handle, ``Cache``: cache, cache-aside with single-flight, and pub/sub, done right (docs/services.md).

- Values are JSON in an envelope ``{"v": ...}`` so a miss (:data:`MISS`) differs from a stored ``null``; a Redis
  error is an error, never a silent miss. Empty batches never reach the server.
- ``get_or_compute``: concurrent misses for one key compute once in this process; a cancelled waiter does not
  cancel the computation; TTLs get +/-10 % jitter.
- Pub/sub messages are ``{data, timestamp, id}``; a subscription survives a Redis restart (reconnect with
  backoff, re-subscribe) and yields a :class:`Gap` so the consumer can resync. A message in any other form (a
  plain ``PUBLISH`` from ``redis-cli``, another language, another service) is delivered as it came, marked
  ``foreign`` (the payload as text, the time it was received, no id); ``Cache.foreign`` counts them.
- A bounded blocking pool, explicit timeouts, retries on connection errors only. Keys never appear in events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...core import describe
from ...health.probe import ProbeResult
from ..base import Emitter, Handle, ServiceUnavailable
from ..events import ServiceOperation
from .lanes import Lanes
from .settings import RedisSettings
from .values import MISS, CacheError, Gap, Message, decode, encode, hit, jitter, json_default, ttl_seconds

T = TypeVar("T")
LANES = 8  # at most this many connections carry the cache's commands, pipelined (lanes.py)


class _Reconnects:
    """Counts reconnects of a pub/sub connection (redis-py keeps connect callbacks as weak methods)."""

    def __init__(self) -> None:
        self.count = 0

    def on_connect(self, connection: Any) -> None:
        self.count += 1


class Cache(Handle):
    """The concurrency-safe handle of the redis worker."""

    service_name = "redis"

    def __init__(self, client: aioredis.Redis, settings: RedisSettings, emitter: Emitter) -> None:
        self.client = client  # pub/sub; every other command goes through the lanes
        # lanes hold their connections: leave one for pub/sub
        lanes = max(1, min(LANES, settings.max_connections - 1))
        self.lanes = Lanes(client.connection_pool, lanes, settings.retries)
        self.settings = settings
        self._emit = emitter
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.foreign = 0  # messages not in our envelope, delivered as they came

    def key(self, key: str) -> str:
        self.check_open("a cache call")  # every operation names its key first: a closed pool is never reopened
        if not isinstance(key, str) or not key:
            raise ValueError(f"cache key must be a non-empty string, got {key!r}")
        return f"{self.settings.namespace}:{key}" if self.settings.namespace else key

    def _fail(self, operation: str, e: Exception) -> Exception:
        """A Redis failure as the error to raise: never a silent miss."""
        if self.closed:
            return self.unavailable(operation)
        if isinstance(e, RedisConnectionError | RedisTimeoutError | OSError):
            return ServiceUnavailable(f"redis {self.settings.describe()} is unreachable: {type(e).__name__}")
        if isinstance(e, RedisError):
            return CacheError(f"redis {operation} failed: {describe(e)}")
        return e

    async def _call(self, operation: str, call: Awaitable[T], **extra: Any) -> T:
        self.check_open(operation, call)
        return await self._emit.measure(operation, call, partial(self._fail, operation), **extra)

    # -- key/value -----------------------------------------------------------------------------------------
    async def get(self, key: str) -> Any:
        """The stored value, or :data:`MISS` (a stored ``None`` comes back as ``None``)."""
        raw = await self._emit.measure("get", self.lanes.execute("GET", self.key(key)), partial(self._fail, "get"),
                                       detail=hit)  # fmt: skip
        return decode(raw)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        payload, ex, k = encode(value), ttl_seconds(ttl), self.key(key)
        command = (
            self.lanes.execute("SET", k, payload) if ex is None else self.lanes.execute("SET", k, payload, "EX", ex)
        )
        await self._emit.measure("set", command, partial(self._fail, "set"))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._call("delete", self.lanes.execute("DEL", *(self.key(k) for k in keys))))

    async def exists(self, key: str) -> bool:
        return bool(await self._call("exists", self.lanes.execute("EXISTS", self.key(key))))

    async def mget(self, keys: list[str]) -> list[Any]:
        if not keys:
            return []
        raws = await self._call("mget", self.lanes.execute("MGET", *(self.key(k) for k in keys)))
        return [decode(r) for r in raws]

    async def mset(self, items: Mapping[str, Any], ttl: float | None = None) -> None:
        """Set several keys, each with the TTL (SET ... EX each, queued together: one round trip)."""
        if not items:
            return
        ex = ttl_seconds(ttl)
        tail = () if ex is None else ("EX", ex)
        sets = [self.lanes.execute("SET", self.key(k), encode(v), *tail) for k, v in items.items()]
        await self._call("mset", asyncio.gather(*sets))

    # -- cache-aside -----------------------------------------------------------------------------------------
    async def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Awaitable[Any]],
        ttl: float | Callable[[Any], float | None] | None = None,
    ) -> Any:
        """The cached value, or ``await compute()`` stored with ``ttl`` (seconds, or a function of the value).

        Concurrent misses for one key share one computation. If Redis fails, the value is still computed and
        returned, and the failure is reported as an error event (degraded, never a silent miss).
        """
        try:
            value = await self.get(key)
        except (ServiceUnavailable, CacheError):
            value = MISS  # degrade: compute; the error event was emitted
        if value is not MISS:
            return value
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._flights[key] = flight
            task = asyncio.ensure_future(self._fill(key, compute, ttl, flight))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif self._emit.active:
            self._emit.emit(ServiceOperation(path=self._emit.path, service="cache", operation="coalesced"))
        return await asyncio.shield(flight)

    async def _fill(
        self, key: str, compute: Callable[[], Awaitable[Any]], ttl: Any, flight: asyncio.Future[Any]
    ) -> None:
        try:
            value = await compute()
        except BaseException as e:
            self._flights.pop(key, None)
            if not flight.done():
                flight.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        try:
            seconds = ttl(value) if callable(ttl) else ttl
            await self.set(key, value, jitter(ttl_seconds(seconds)))
        except (ServiceUnavailable, CacheError):
            pass  # the value is served; the error event says the cache is degraded
        finally:
            # Waiters are answered once the value is stored (or storing failed): a caller that got the value
            # and reads the key next finds it, instead of a miss racing the SET.
            if not flight.done():
                flight.set_result(value)
            # A GET issued before the value was stored may still answer "miss"; for as long as such a GET can
            # take (the socket timeout), it finds this finished flight instead of computing again.
            asyncio.get_running_loop().call_later(self.settings.socket_timeout, self._land, key, flight)

    def _land(self, key: str, flight: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    # -- pub/sub -------------------------------------------------------------------------------------------
    async def publish(self, channel: str, data: Any) -> int:
        envelope = {"data": data, "timestamp": dt.datetime.now(dt.UTC).isoformat(), "id": str(uuid.uuid4())}
        try:
            text = json.dumps(envelope, default=json_default)
        except (TypeError, ValueError) as e:
            raise CacheError(f"message is not JSON-serialisable: {e}") from None
        return int(await self._call("publish", self.lanes.execute("PUBLISH", channel, text), direction="out"))

    async def subscribe(self, channel: str) -> AsyncIterator[Message | Gap]:
        """Messages of ``channel``; after a lost connection, a :class:`Gap`, then messages again.

        redis-py may reconnect and re-subscribe by itself (its retries); a connect callback notices that, so a
        reconnect always yields a Gap whether or not an error surfaced here.
        """
        backoff = 0.05
        down_since: float | None = None
        watch = _Reconnects()
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(watch.on_connect)
                if down_since is not None:
                    yield Gap(channel, dt.datetime.now(dt.UTC).isoformat(), time.monotonic() - down_since)
                    down_since = None
                backoff = 0.05
                last_ok = time.monotonic()
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if watch.count:
                        watch.count = 0
                        yield Gap(channel, dt.datetime.now(dt.UTC).isoformat(), time.monotonic() - last_ok)
                    last_ok = time.monotonic()
                    if msg is None:
                        continue
                    yield self._parse(channel, msg.get("data"))
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if down_since is None:
                    down_since = time.monotonic()
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError):
                    pass

    def _parse(self, channel: str, raw: Any) -> Message:
        self._emit.op("receive", time.perf_counter(), direction="in")
        try:
            env = json.loads(raw)
            if not isinstance(env, dict) or set(env) != {"data", "timestamp", "id"}:
                raise ValueError("not our envelope")
            uuid.UUID(str(env["id"]))
            dt.datetime.fromisoformat(str(env["timestamp"]))
        except (ValueError, TypeError):
            self.foreign += 1
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode("utf-8")
                except UnicodeDecodeError:
                    pass  # binary: delivered as bytes
            return Message(raw, dt.datetime.now(dt.UTC).isoformat(), "", channel, foreign=True)
        return Message(env["data"], env["timestamp"], env["id"], channel)

    async def probe(self) -> ProbeResult | None:
        await self._call("ping", self.lanes.execute("PING"))
        return None
