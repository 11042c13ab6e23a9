"""The redis worker against a private redis-server started by the tests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcp_supervisor.core import Backoff, ChildStarted, SupervisorFlags, SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.services.base import ServiceUnavailable
from mcp_supervisor.services.events import ServiceOperation
from mcp_supervisor.services.redis import MISS, Cache, CacheError, Gap, Message, RedisSettings, factory
from mcp_supervisor.testing import Recorder, until
from mcp_supervisor.testing.servers import RedisServer


def cache_tree(rds: RedisServer, **settings: Any) -> Tree:
    spec = WorkerSpec(
        id="cache",
        run=factory({**rds.settings, "namespace": "t", **settings}),
        backoff=Backoff(initial=0.1, max=0.5, jitter=0),
    )
    return Tree(SupervisorSpec(id="root", flags=SupervisorFlags(intensity=100), children=[spec]))


async def handle(tree: Tree) -> Cache:
    c = await tree.handle("cache", wait=10)
    assert isinstance(c, Cache)
    return c


async def test_get_set_ttl_and_the_envelope_tells_a_miss_from_a_stored_null(rds: RedisServer) -> None:
    tree = cache_tree(rds)
    rec = Recorder(tree.bus)
    async with tree:
        c = await handle(tree)
        await c.delete("k", "nothing")
        assert await c.get("k") is MISS
        await c.set("k", None, ttl=60)
        assert await c.get("k") is None
        await c.set("k", {"a": [1, "x"]}, ttl=60)
        assert await c.get("k") == {"a": [1, "x"]}
        await c.set("num", "123", ttl=60)
        assert await c.get("num") == "123"  # a string that looks like JSON keeps its type
        assert 55 <= await c.client.ttl("t:k") <= 60
        assert await c.exists("k") and await c.delete("k") == 1 and not await c.exists("k")
        with pytest.raises(ValueError, match="ttl: must be >= 1"):
            await c.set("k", 1, ttl=0)
        with pytest.raises(CacheError, match="not JSON-serialisable"):
            await c.set("k", object())
        await c.client.set("t:raw", "plain text")
        with pytest.raises(CacheError, match="not JSON"):
            await c.get("raw")
    results = [e.result for e in rec.drain() if isinstance(e, ServiceOperation) and e.operation == "get"]
    assert results[:3] == ["miss", "hit", "hit"]
    assert not any("t:k" in repr(e) for e in rec.seen)  # keys never appear in events


async def test_batches_pipeline_ttls_and_empty_batches_short_circuit(rds: RedisServer) -> None:
    async with cache_tree(rds) as tree:
        c = await handle(tree)
        assert await c.mget([]) == []
        await c.mset({})
        await c.mset({"a": 1, "b": None}, ttl=30)
        assert await c.mget(["a", "b", "zz"]) == [1, None, MISS]
        assert 25 <= await c.client.ttl("t:a") <= 30 and 25 <= await c.client.ttl("t:b") <= 30


async def test_single_flight_computes_once_for_100_concurrent_misses(rds: RedisServer) -> None:
    async with cache_tree(rds) as tree:
        c = await handle(tree)
        await c.delete("sf")
        calls = 0
        release = asyncio.Event()

        async def compute() -> dict[str, int]:
            nonlocal calls
            calls += 1
            await release.wait()
            return {"n": 7}

        waiters = [asyncio.ensure_future(c.get_or_compute("sf", compute, ttl=lambda v: 100)) for _ in range(100)]
        await until(lambda: calls == 1 and "sf" in c._flights)
        waiters[0].cancel()  # a cancelled waiter does not cancel the computation
        release.set()
        results = await asyncio.gather(*waiters[1:])
        assert calls == 1 and all(r == {"n": 7} for r in results)
        assert await c.get("sf") == {"n": 7}
        assert 89 <= await c.client.ttl("t:sf") <= 110  # +/-10 % jitter
        assert await c.get_or_compute("sf", compute) == {"n": 7} and calls == 1  # now a hit


async def test_a_redis_error_is_an_error_never_a_silent_miss(rds: RedisServer) -> None:
    async with cache_tree(rds, check_interval=30, retries=0) as tree:
        c = await handle(tree)
        rds.kill()
        try:
            async with asyncio.timeout(30):  # a hang guard: a dead server is refused at once
                with pytest.raises(ServiceUnavailable, match="unreachable"):
                    await c.get("k")
                with pytest.raises(ServiceUnavailable):
                    await c.exists("k")

            async def compute() -> str:
                return "computed"

            assert await c.get_or_compute("k", compute) == "computed"  # degrades, with an error event
        finally:
            rds.start()


async def test_pub_sub_survives_a_redis_restart_with_a_gap_marker(rds: RedisServer) -> None:
    async with cache_tree(rds, check_interval=30) as tree:
        c = await handle(tree)
        got: list[Message | Gap] = []

        async def consume() -> None:
            async for item in c.subscribe("events"):
                got.append(item)

        consumer = asyncio.ensure_future(consume())
        await until(lambda: _subscribers(rds) == 1, what="subscribed")
        await c.publish("events", {"n": 1})
        await until(lambda: len(got) == 1)
        assert isinstance(got[0], Message) and got[0].data == {"n": 1} and not got[0].foreign
        rds.kill()
        rds.start()
        await until(lambda: any(isinstance(g, Gap) for g in got), timeout=20, what="gap marker")
        await until(lambda: _subscribers(rds) == 1, timeout=20, what="re-subscribed")
        await c.publish("events", {"n": 2})
        await until(lambda: isinstance(got[-1], Message) and got[-1].data == {"n": 2})
        consumer.cancel()


def _subscribers(rds: RedisServer) -> int:
    import subprocess

    out = subprocess.run(
        ["redis-cli", "-p", str(rds.port), "pubsub", "numsub", "events"], capture_output=True, text=True
    ).stdout.split()
    return int(out[1]) if len(out) > 1 else 0


async def test_the_worker_restarts_when_redis_dies_and_comes_back(rds: RedisServer) -> None:
    tree = cache_tree(rds, check_interval=0.1, connect_attempts=1, connect_timeout=0.5)
    rec = Recorder(tree.bus)
    async with tree:
        await handle(tree)
        rds.kill()
        await rec.wait(
            lambda e: (
                isinstance(e, ChildStarted) is False
                and getattr(e, "path", "") == "cache"
                and type(e).__name__ == "ChildExited"
            ),
            timeout=10,
        )
        rds.start()
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.restarts >= 1, timeout=20)
        c = await handle(tree)
        await c.set("back", True)
        assert await c.get("back") is True


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="host: required when env = prod"):
        RedisSettings({"env": "prod"})
    with pytest.raises(ValueError, match=r"max_connections: must be an integer 1\.\.10000, got 0"):
        RedisSettings({"max_connections": 0})
    with pytest.raises(ValueError, match="bogus: unknown setting"):
        RedisSettings({"bogus": 1})


async def test_a_call_on_a_handle_whose_worker_restarted_is_service_unavailable(rds: RedisServer) -> None:
    async with cache_tree(rds) as tree:
        old = await handle(tree)
        await tree.terminate_child("cache")
        await tree.restart_child("cache")
        for call in (old.get("k"), old.set("k", 1), old.publish("ch", 1), old.probe()):
            with pytest.raises(ServiceUnavailable, match="the redis worker stopped"):
                await call


async def test_a_message_someone_else_published_is_delivered_as_it_came(rds: RedisServer) -> None:
    """Other publishers (redis-cli, other languages) do not speak our envelope: their messages arrive, marked."""
    async with cache_tree(rds, check_interval=30) as tree:
        c = await handle(tree)
        got: list[Message | Gap] = []

        async def consume() -> None:
            async for item in c.subscribe("events"):
                got.append(item)

        consumer = asyncio.ensure_future(consume())
        await until(lambda: _subscribers(rds) == 1, what="subscribed")
        import subprocess

        for payload in ("hello from redis-cli", '{"data": 1, "timestamp": "x", "id": "y"}'):
            subprocess.run(["redis-cli", "-p", str(rds.port), "PUBLISH", "events", payload], check=True,
                           capture_output=True)  # fmt: skip
        await c.publish("events", {"ours": True})
        await until(lambda: len(got) == 3, what="all three messages")
        first, second, ours = got
        assert isinstance(first, Message) and first.foreign and first.data == "hello from redis-cli"
        assert first.id == "" and first.timestamp and first.channel == "events"
        assert isinstance(second, Message) and second.foreign and second.data.startswith('{"data": 1')
        assert isinstance(ours, Message) and not ours.foreign and ours.data == {"ours": True} and ours.id
        assert c.foreign == 2
        consumer.cancel()
