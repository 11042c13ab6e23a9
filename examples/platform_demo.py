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

from mcp_supervisor.worker import (
    MISS,
    Cache,
    ChildContext,
    Database,
    ServiceError,
    ServiceUnavailable,
    Settings,
    Storage,
    Vault,
    get_logger,
    service,
)


def factory(config: Mapping[str, Any]) -> Callable[[ChildContext[Any]], Awaitable[None]]:
    s = Settings(config, {"every", "tenant"})
    every = s.seconds("every", 3.0, above=True)
    tenant = s.text("tenant", "demo") or "demo"

    async def run(ctx: ChildContext[Any]) -> None:
        log = get_logger("examples.platform_demo").bind(child=ctx.path)
        db_ref = service(ctx, "postgres/db", Database, wait=5)
        cache_ref = service(ctx, "redis/cache", Cache, wait=5)
        storage_ref = service(ctx, "s3/storage", Storage, wait=5)
        secrets_ref = service(ctx, "vault/secrets", Vault, wait=5)
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
                db, cache = await db_ref.get(), await cache_ref.get()
                storage, secrets = await storage_ref.get(), await secrets_ref.get()
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
            except (ServiceError, OSError) as e:  # ServiceUnavailable (restarting) and every service's own error
                prepared = prepared and not isinstance(e, ServiceUnavailable)
                log.warning("round trip failed; retrying next round", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(every)

    return run
