"""The example application of the local stack (``worker = "examples.platform_demo:factory"``).

Every few seconds it writes a row in a tenant schema, caches it, stores an object, encrypts and decrypts a
value, publishes an event, and logs one line with the round-trip times. While a service restarts, that round
reports it and the next one tries again: the references follow the restarts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp_supervisor.core import ChildContext
from mcp_supervisor.services.base import ServiceError, ServiceUnavailable, service
from mcp_supervisor.services.redis import MISS
from mcp_supervisor.services.vault import VaultError
from mcp_supervisor.telemetry.logs import get_logger


def factory(config: Mapping[str, Any]) -> Callable[[ChildContext], Awaitable[None]]:
    try:
        every = float(config.get("every", 3))
    except (TypeError, ValueError):
        raise ValueError(f"every: must be a number of seconds, got {config.get('every')!r}") from None
    if every <= 0:
        raise ValueError(f"every: must be > 0 seconds, got {every!r}")
    tenant = str(config.get("tenant", "demo"))
    unknown = set(config) - {"every", "tenant"}
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown setting (allowed: every, tenant)")

    async def run(ctx: ChildContext) -> None:
        log = get_logger("examples.platform_demo").bind(child=ctx.path)
        db = service(ctx, "postgres/db", wait=5)
        cache = service(ctx, "redis/cache", wait=5)
        storage = service(ctx, "s3/storage", wait=5)
        secrets = service(ctx, "vault/secrets", wait=5)
        ctx.started()
        prepared = False
        while True:
            times: dict[str, float] = {}

            async def step(name: str, call: Awaitable[Any], times: dict[str, float] = times) -> Any:
                t0 = time.perf_counter()
                result = await call
                times[name] = round((time.perf_counter() - t0) * 1000, 2)
                return result

            try:
                if not prepared:
                    await db.create_tenant_schema(tenant)
                    async with db.tenant(tenant) as conn:
                        await conn.execute(
                            "CREATE TABLE IF NOT EXISTS events "
                            "(id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), note text)"
                        )
                    prepared = True
                async with db.tenant(tenant) as conn:
                    t0 = time.perf_counter()
                    row = await conn.fetchrow("INSERT INTO events (note) VALUES ($1) RETURNING id, at", "hello")
                    times["db_ms"] = round((time.perf_counter() - t0) * 1000, 2)
                event = {"id": row["id"], "at": row["at"].isoformat(), "tenant": tenant}
                await step("cache_ms", cache.set(f"event:{row['id']}", event, ttl=300))
                if await cache.get(f"event:{row['id']}") is MISS:
                    raise RuntimeError("the cached event is missing")
                await step("s3_ms", storage.upload(f"events/{row['id']}.json", json.dumps(event).encode(),
                                                   content_type="application/json"))  # fmt: skip
                ciphertext = await step("encrypt_ms", secrets.encrypt("demo", b"a value worth protecting"))
                plain = await step("decrypt_ms", secrets.decrypt("demo", ciphertext))
                if plain != b"a value worth protecting":
                    raise RuntimeError("transit round trip changed the value")
                await step("publish_ms", cache.publish("demo.events", event))
                log.info("round trip ok", row_id=row["id"], **times)
            except (ServiceUnavailable, ServiceError, VaultError, OSError) as e:
                prepared = prepared and not isinstance(e, ServiceUnavailable)
                log.warning("round trip failed; retrying next round", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(every)

    return run
