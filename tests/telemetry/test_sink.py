"""The telemetry sink: JSON logs, metrics that parse, a bounded queue that never blocks, restart on crash."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mcp_supervisor.core import Call, ChildStarted, SupervisorFlags, SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.health.monitor import HealthMonitor
from mcp_supervisor.health.monitor import factory as health_factory
from mcp_supervisor.services.events import ServiceOperation, ServiceState
from mcp_supervisor.telemetry import logs
from mcp_supervisor.telemetry.metrics import METRICS_REGISTRY
from mcp_supervisor.telemetry.sink import factory as sink_factory
from mcp_supervisor.testing import Recorder, until
from tests.health.test_monitor import Service


@pytest.fixture
def log_stream() -> Any:
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    yield stream
    logs.configure("info", "json")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def echo(ctx: Any) -> None:
    mb = ctx.mailbox
    ctx.register("echo")
    ctx.started()
    async for msg in mb:
        if isinstance(msg, Call):
            msg.reply(msg.payload)


def platform(queue: int = 10_000, **health: Any) -> tuple[Tree, CollectorRegistry]:
    registry = CollectorRegistry()
    tree = Tree(
        SupervisorSpec(
            id="root",
            flags=SupervisorFlags(intensity=10),
            children=[
                WorkerSpec(id="echo", run=echo),
                WorkerSpec(
                    id="telemetry",
                    run=sink_factory({"queue": queue, "slow_query_warn_ms": 100, "slow_query_info_ms": 50}),
                ),
                *([WorkerSpec(id="health", run=health_factory({"interval": 3600, **health}))] if health else []),
            ],
        )
    )
    tree.provide(METRICS_REGISTRY, registry)
    return tree, registry


async def drained(tree: Tree) -> None:
    sink_sub = next(s for s in tree.bus._subs if s._maxlen != 1_000_000)
    await until(lambda: len(sink_sub) == 0, what="sink drained")
    await asyncio.sleep(0)


def emit_all(tree: Tree) -> None:
    bus = tree.bus
    bus.emit(
        ServiceOperation(
            path="db", service="db", operation="select", duration_s=0.002, statement="SELECT * FROM t WHERE id = $1"
        )
    )
    bus.emit(
        ServiceOperation(path="db", service="db", operation="select", duration_s=0.2, statement="SELECT pg_sleep($1)")
    )
    bus.emit(ServiceOperation(path="cache", service="cache", operation="get", result="hit", duration_s=0.0003))
    bus.emit(ServiceOperation(path="cache", service="cache", operation="get", result="miss", duration_s=0.0004))
    bus.emit(
        ServiceOperation(
            path="storage", service="storage", operation="upload", bytes=1024, direction="out", duration_s=0.5
        )
    )
    bus.emit(ServiceOperation(path="vault", service="vault", operation="kv_read", duration_s=0.003))
    bus.emit(ServiceOperation(path="vault", service="vault", operation="kv_read", outcome="timeout", duration_s=5))
    bus.emit(ServiceOperation(path="cache", service="pubsub", operation="publish", direction="out"))
    bus.emit(ServiceState(path="vault", service="vault", state="token_ttl", value=1800))


EXPECTED = {
    "mcp_db_query_duration_seconds": ("histogram", {"operation", "outcome"}),
    "mcp_db_slow_queries": ("counter", {"severity"}),
    "mcp_cache_requests": ("counter", {"operation", "result"}),
    "mcp_cache_operation_duration_seconds": ("histogram", {"operation"}),
    "mcp_storage_bytes": ("counter", {"direction"}),
    "mcp_storage_operation_duration_seconds": ("histogram", {"operation", "outcome"}),
    "mcp_vault_request_duration_seconds": ("histogram", {"operation"}),
    "mcp_vault_token_ttl_seconds": ("gauge", set()),
    "mcp_pubsub_messages": ("counter", {"direction"}),
    "mcp_health_check_status": ("gauge", {"check"}),
    "mcp_health_check_duration_seconds": ("histogram", {"check"}),
    "mcp_telemetry_events": ("counter", set()),
    "mcp_telemetry_events_dropped": ("counter", set()),
}


async def test_every_metric_parses_with_its_documented_type_and_labels(log_stream: io.StringIO) -> None:
    tree, registry = platform(critical=[], checks=["echo"])
    async with tree:
        mon = await tree.handle("health")
        assert isinstance(mon, HealthMonitor)
        await mon.round()
        emit_all(tree)
        await drained(tree)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for name, (kind, labels) in EXPECTED.items():
        assert name in families, name
        fam = families[name]
        assert fam.type == kind, (name, fam.type)
        samples = [s for s in fam.samples if not s.name.endswith("_created")]
        assert samples, name
        for s in samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
    buckets = {s.labels["le"] for s in families["mcp_db_query_duration_seconds"].samples if "le" in s.labels}
    assert {"0.5", "1.0"} <= buckets  # the slow-query thresholds are bucket edges
    hits = [s for s in families["mcp_cache_requests"].samples if s.name == "mcp_cache_requests_total"]
    assert {s.labels["result"]: s.value for s in hits} == {"hit": 1.0, "miss": 1.0}


async def test_log_lines_are_json_with_the_documented_keys_and_no_sql_arguments(log_stream: io.StringIO) -> None:
    tree, _ = platform()
    async with tree:
        emit_all(tree)
        await drained(tree)
    out = lines(log_stream)
    assert out and all({"ts", "level", "event"} <= set(line) for line in out)
    slow = [line for line in out if line["event"] == "slow query"]
    assert len(slow) == 1 and slow[0]["level"] == "warning" and slow[0]["statement"] == "SELECT pg_sleep($1)"
    failed = [line for line in out if line["event"] == "operation failed"]
    assert failed[0]["outcome"] == "timeout" and failed[0]["service"] == "vault"


async def test_a_flapping_dependency_logs_exactly_one_line_per_transition(log_stream: io.StringIO) -> None:
    flappy = Service("pass")
    registry = CollectorRegistry()
    tree = Tree(SupervisorSpec(id="root", children=[
        WorkerSpec(id="cache", run=flappy.run),
        WorkerSpec(id="telemetry", run=sink_factory({})),
        WorkerSpec(id="health", run=health_factory({"interval": 3600, "system": False, "checks": ["cache"]})),
    ]))  # fmt: skip
    tree.provide(METRICS_REGISTRY, registry)
    async with tree:
        mon = await tree.handle("health")
        await until(lambda: mon.snapshot.overall != "unknown")
        modes = ["pass", "fail", "fail", "fail", "pass", "pass", "fail", "pass"]
        for mode in modes:
            flappy.mode = mode
            await mon.round()
        await drained(tree)
    changed = [line for line in lines(log_stream) if line["event"] == "health check changed"]
    assert [(c["previous"], c["current"]) for c in changed] == [
        ("unknown", "pass"), ("pass", "fail"), ("fail", "pass"), ("pass", "fail"), ("fail", "pass"),
    ]  # fmt: skip
    assert changed[1]["level"] == "warning" and changed[1]["output"] == "ConnectionError: connection refused"


async def test_a_flood_of_a_million_events_adds_little_latency_and_drops_are_counted() -> None:
    tree, registry = platform(queue=1_000)
    async with tree:
        sink_sub = next(s for s in tree.bus._subs)
        latencies: list[float] = []
        done = asyncio.Event()

        async def flood() -> None:
            ev = ServiceOperation(path="cache", service="cache", operation="get", result="hit", duration_s=0.0001)
            emit = tree.bus.emit
            for _ in range(200):
                for _ in range(5000):
                    emit(ev)
                await asyncio.sleep(0)
            done.set()

        async def caller() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                await tree.call("echo", 1)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(flood(), caller())
        took = time.perf_counter() - t0
        await drained(tree)
        dropped = sink_sub.dropped
    assert dropped > 0
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    counted = next(s.value for s in families["mcp_telemetry_events_dropped"].samples if s.name.endswith("_total"))
    handled = next(s.value for s in families["mcp_telemetry_events"].samples if s.name.endswith("_total"))
    assert counted == dropped
    assert 1_000_000 - dropped <= handled < 1_000_000 - dropped + 100  # + the tree's own few events
    # calls kept being answered all through the flood: the sink never held the loop (a call waits at most for one
    # batch of 5,000 emits); the latency figures are in benchmarks/core.py (flood_call_latency)
    assert len(latencies) > 50, f"only {len(latencies)} calls answered during a {took:.1f}s flood"
    assert max(latencies) < 5, "a call waited seconds: something blocked the loop"


async def test_a_crashing_sink_is_restarted_without_disturbing_its_siblings(log_stream: io.StringIO) -> None:
    tree, _ = platform()
    rec = Recorder(tree.bus)
    async with tree:
        echo_handle = tree.child("echo").task
        # a buggy emitter: a duration that is not a number makes the sink's histogram raise
        tree.bus.emit(ServiceOperation(path="db", service="db", operation="select", duration_s="soon"))  # type: ignore[arg-type]
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.path == "telemetry" and e.restarts == 1)
        assert tree.child("echo").task is echo_handle and tree.child("echo").restarts == 0
        assert await tree.call("echo", 7) == 7
        emit_all(tree)
        await drained(tree)
    assert any(line["event"] == "slow query" for line in lines(log_stream))  # the new sink works


async def test_log_lines_carry_the_child_from_the_context(log_stream: io.StringIO) -> None:
    async def chatty(ctx: Any) -> None:
        logs.get_logger().info("hello from a worker")
        ctx.started()
        await asyncio.Event().wait()

    async with Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="chatty", run=chatty)])):
        pass
    line = next(x for x in lines(log_stream) if x["event"] == "hello from a worker")
    assert line["child"] == "chatty"


def test_bad_sink_settings_name_the_setting() -> None:
    with pytest.raises(ValueError, match=r"queue: must be an integer 1\.\.10000000, got 0"):
        sink_factory({"queue": 0})
    with pytest.raises(ValueError, match="qeue: unknown setting"):
        sink_factory({"qeue": 10})
