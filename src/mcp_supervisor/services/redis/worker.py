"""``worker = "redis"``: connect with bounded backoff, hand out the ``Cache`` when ``PING`` answers, exit (to be
restarted with backoff) when the server is gone, close within the child's shutdown budget."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError

from ...core import ChildContext, WorkerFn
from ..base import Emitter, ServiceUnavailable, retry_connect
from .cache import Cache
from .settings import RedisSettings

CLOSE_TIMEOUT = 2.0  # seconds to close the pool when no shutdown budget is known (a crash, not a stop)


async def run_redis(ctx: ChildContext[Cache], settings: RedisSettings) -> None:
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

    async def run(ctx: ChildContext[Any]) -> None:
        await run_redis(ctx, parsed)

    return run
