"""``worker = "redis"``: cache, cache-aside with single-flight, and pub/sub, done right (SERVICES.md §2).

- Values are JSON in an envelope ``{"v": ...}`` so a miss (:data:`MISS`) differs from a stored ``null``; a Redis
  error is an error, never a silent miss. Empty batches never reach the server.
- ``get_or_compute``: concurrent misses for one key compute once in this process; a cancelled waiter does not
  cancel the computation; TTLs get +/-10 % jitter.
- Pub/sub messages are ``{data, timestamp, id}``; a subscription survives a Redis restart (reconnect with
  backoff, re-subscribe) and yields a :class:`Gap` so the consumer can resync; malformed messages are counted.
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
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core import ChildContext, WorkerFn, describe
from ..probe import ProbeResult
from ..settings import Settings, read_secret_file
from .base import Emitter, Handle, ServiceError, ServiceUnavailable, retry_connect
from .events import ServiceOperation
from .redislanes import Lanes

T = TypeVar("T")
LANES = 8  # at most this many connections carry the cache's commands, pipelined (redislanes.py)
CLOSE_TIMEOUT = 2.0  # seconds to close the pool when no shutdown budget is known (a crash, not a stop)


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"

    def __bool__(self) -> bool:
        return False


MISS: Any = _Miss()


class CacheError(ServiceError):
    """Redis answered with an error, or the value in Redis is not ours (not our JSON envelope)."""


@dataclass(frozen=True, slots=True)
class Message:
    data: Any
    timestamp: str
    id: str
    channel: str


@dataclass(frozen=True, slots=True)
class Gap:
    """The subscription reconnected: messages published meanwhile are lost (pub/sub is at-most-once)."""

    channel: str
    reconnected_at: str
    down_s: float


def _encode(value: Any) -> str:
    try:
        return json.dumps({"v": value}, separators=(",", ":"), default=_default)
    except (TypeError, ValueError) as e:
        raise CacheError(f"value is not JSON-serialisable: {e}") from None


def _default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _decode(raw: bytes | str | None) -> Any:
    if raw is None:
        return MISS
    try:
        env = json.loads(raw)
    except ValueError:
        raise CacheError("a stored value is not JSON (written by something else?)") from None
    if not isinstance(env, dict) or set(env) != {"v"}:
        raise CacheError("a stored value is not in the cache envelope (written by something else?)")
    return env["v"]


def _hit(raw: object) -> dict[str, Any]:
    return {"result": "miss" if raw is None else "hit"}


def _ttl(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 1:
        raise ValueError(f"ttl: must be >= 1 second or None, got {ttl!r}")
    return int(ttl)


def _jitter(ttl: int | None) -> int | None:
    if ttl is None:
        return None
    return max(1, round(ttl * random.uniform(0.9, 1.1)))


SETTINGS_KEYS = frozenset({
    "url", "host", "port", "db", "username", "password", "password_file", "ssl", "namespace",
    "max_connections", "socket_timeout", "connect_timeout", "pool_timeout", "retries", "connect_attempts",
    "check_interval", "check_failures", "env",
})  # fmt: skip
"""Every key of this worker's ``config`` table."""


class RedisSettings:
    def __init__(self, table: Mapping[str, Any]) -> None:
        s = Settings(table, SETTINGS_KEYS)
        self.env = s.text("env", "dev", ("prod", "test", "dev")) or "dev"
        self.url = s.text("url") or None
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise s.error("url", "must start with redis://, rediss:// or unix://")
        self.host = s.text("host") or None
        if self.env == "prod" and not (self.host or self.url):
            raise s.error("host", "required when env = prod (no silent localhost default)")
        self.host = self.host or "localhost"
        self.port = s.port("port", 6379)
        self.db = s.integer("db", 0, 0)
        self.username = s.text("username") or None
        password = s.text("password") or None
        pf = s.text("password_file") or None
        self.password = read_secret_file("password_file", pf) if pf else password
        self.ssl = s.boolean("ssl", False)
        self.namespace = s.text("namespace", "", max_len=1024) or ""
        self.max_connections = s.integer("max_connections", 20, 1, 10_000)
        self.socket_timeout = s.seconds("socket_timeout", 5.0, 0.01)
        self.connect_timeout = s.seconds("connect_timeout", 5.0, 0.01)
        self.pool_timeout = s.seconds("pool_timeout", 5.0, 0.01)
        self.retries = s.integer("retries", 2, 0, 100)
        self.connect_attempts = s.integer("connect_attempts", 5, 1, 1000)
        self.check_interval = s.seconds("check_interval", 2.0, 0.05)
        self.check_failures = s.integer("check_failures", 2, 1, 1000)

    def describe(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def client(self) -> aioredis.Redis:
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), self.retries)
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout, "socket_connect_timeout": self.connect_timeout,
            "max_connections": self.max_connections, "timeout": self.pool_timeout, "retry": retry,
            "retry_on_error": [RedisConnectionError, RedisTimeoutError], "username": self.username,
            "password": self.password,
        }  # fmt: skip
        if self.url:
            pool = aioredis.BlockingConnectionPool.from_url(self.url, **kwargs)
        else:
            conn_class = aioredis.SSLConnection if self.ssl else aioredis.Connection
            pool = aioredis.BlockingConnectionPool(
                host=self.host, port=self.port, db=self.db, connection_class=conn_class, **kwargs
            )
        return aioredis.Redis(connection_pool=pool)


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
        self.malformed = 0

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
                                       detail=_hit)  # fmt: skip
        return _decode(raw)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        payload, ex, k = _encode(value), _ttl(ttl), self.key(key)
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
        return [_decode(r) for r in raws]

    async def mset(self, items: Mapping[str, Any], ttl: float | None = None) -> None:
        """Set several keys, each with the TTL (SET ... EX each, queued together: one round trip)."""
        if not items:
            return
        ex = _ttl(ttl)
        tail = () if ex is None else ("EX", ex)
        sets = [self.lanes.execute("SET", self.key(k), _encode(v), *tail) for k, v in items.items()]
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
            await self.set(key, value, _jitter(_ttl(seconds)))
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
            text = json.dumps(envelope, default=_default)
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
                    parsed = self._parse(channel, msg.get("data"))
                    if parsed is not None:
                        yield parsed
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

    def _parse(self, channel: str, raw: Any) -> Message | None:
        try:
            env = json.loads(raw)
            if not isinstance(env, dict) or {"data", "timestamp", "id"} - set(env):
                raise ValueError("missing fields")
            uuid.UUID(str(env["id"]))
            dt.datetime.fromisoformat(str(env["timestamp"]))
        except (ValueError, TypeError):
            self.malformed += 1
            return None
        self._emit.op("receive", time.perf_counter(), direction="in")
        return Message(env["data"], env["timestamp"], env["id"], channel)

    async def probe(self) -> ProbeResult | None:
        await self._call("ping", self.lanes.execute("PING"))
        return None


async def run_redis(ctx: ChildContext, settings: RedisSettings) -> None:
    emitter = Emitter(ctx, "cache")
    client = settings.client()

    async def connect() -> None:
        async with asyncio.timeout(settings.connect_timeout):
            await client.ping()

    cache = Cache(client, settings, emitter)
    cache.lanes.start()
    try:
        await retry_connect(connect, settings.connect_attempts, 0.05, 1.0, f"redis {settings.describe()}")
        ctx.started(cache)
        failures = 0
        while True:  # liveness: exit (and be restarted with backoff) when the server is gone
            await asyncio.sleep(settings.check_interval)
            try:
                await cache.lanes.execute("PING")
                failures = 0
            except (RedisError, OSError) as e:
                failures += 1
                if failures >= settings.check_failures:
                    raise ServiceUnavailable(f"lost redis {settings.describe()}: {type(e).__name__}") from e
    finally:
        cache.closed = True
        try:
            async with asyncio.timeout(ctx.cleanup_time_left(CLOSE_TIMEOUT)):  # within the child's shutdown budget
                await cache.lanes.close()
                await client.aclose()
                await client.connection_pool.disconnect()  # a pool we passed in is ours to close
        except (RedisError, OSError, TimeoutError):
            pass


def factory(settings: Mapping[str, Any]) -> WorkerFn:
    parsed = RedisSettings(settings)

    async def run(ctx: ChildContext) -> None:
        await run_redis(ctx, parsed)

    return run
