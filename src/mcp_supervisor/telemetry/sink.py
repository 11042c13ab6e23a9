"""``worker = "telemetry"``: the sink that turns service and health events into logs and metrics.

Between emitters and the sink sits a bounded queue (the event bus subscription): emitting never waits, and when
the sink falls behind new events are dropped and counted (``mcp_telemetry_events_dropped_total``). If the sink
crashes it is restarted by its supervisor and the tree keeps running. The daemon logs the core's own tree
transitions itself, so the sink skips those.

Secret-safe by construction: events carry no SQL arguments, no raw cache keys, no secret values.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..config.settings import DAY, Settings
from ..core import ChildContext, Event, WorkerFn
from ..health.monitor import HealthRound, HealthTransition
from ..services.events import ServiceOperation, ServiceState
from .logs import get_logger
from .metrics import METRICS_REGISTRY

DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORAGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SLICE = 64  # events handled before the sink yields to the loop
STATUS_VALUE = {"pass": 1.0, "warn": 0.5, "fail": 0.0}


class ServiceMetrics:
    """The services' and health monitor's metrics, created once per registry (a restarted sink reuses them)."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, ServiceMetrics] = weakref.WeakKeyDictionary()

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> ServiceMetrics:
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found

    def __init__(self, r: CollectorRegistry) -> None:
        self.db_duration = Histogram("mcp_db_query_duration_seconds", "Database query time", ["operation", "outcome"],
                                     buckets=DB_BUCKETS, registry=r)  # fmt: skip
        self.db_slow = Counter("mcp_db_slow_queries", "Queries over the slow thresholds", ["severity"], registry=r)
        self.cache_requests = Counter("mcp_cache_requests", "Cache requests by result", ["operation", "result"],
                                      registry=r)  # fmt: skip
        self.cache_duration = Histogram("mcp_cache_operation_duration_seconds", "Cache operation time",
                                        ["operation"], buckets=DB_BUCKETS, registry=r)  # fmt: skip
        self.storage_bytes = Counter("mcp_storage_bytes", "Bytes moved to and from object storage", ["direction"],
                                     registry=r)  # fmt: skip
        self.storage_duration = Histogram("mcp_storage_operation_duration_seconds", "Object storage operation time",
                                          ["operation", "outcome"], buckets=STORAGE_BUCKETS, registry=r)  # fmt: skip
        self.vault_duration = Histogram("mcp_vault_request_duration_seconds", "Vault request time", ["operation"],
                                        buckets=DB_BUCKETS, registry=r)  # fmt: skip
        self.vault_ttl = Gauge("mcp_vault_token_ttl_seconds", "Remaining TTL of the Vault token (+Inf: never expires)",
                               registry=r)  # fmt: skip
        self.pubsub = Counter("mcp_pubsub_messages", "Pub/sub messages", ["direction"], registry=r)
        self.health_status = Gauge("mcp_health_check_status", "1 pass, 0.5 warn, 0 fail", ["check"], registry=r)
        self.health_duration = Histogram("mcp_health_check_duration_seconds", "Health check time", ["check"],
                                         buckets=DB_BUCKETS, registry=r)  # fmt: skip
        self.events = Counter("mcp_telemetry_events", "Events handled by the telemetry sink", registry=r)
        self.dropped = Counter("mcp_telemetry_events_dropped", "Events dropped because the sink was behind",
                               registry=r)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkSettings:
    queue: int = 10_000
    slow_query_warn_ms: float = 1000.0
    slow_query_info_ms: float = 500.0


SETTINGS_KEYS = frozenset({"queue", "slow_query_warn_ms", "slow_query_info_ms"})


def parse_settings(settings: Mapping[str, Any]) -> SinkSettings:
    s = Settings(settings, SETTINGS_KEYS)
    return SinkSettings(
        queue=s.integer("queue", 10_000, 1, 10_000_000),
        slow_query_warn_ms=s.number("slow_query_warn_ms", 1000.0, 0.0, DAY * 1000, above=True),
        slow_query_info_ms=s.number("slow_query_info_ms", 500.0, 0.0, DAY * 1000, above=True),
    )


class Sink:
    """Handles one event at a time; a failure here is a bug that crashes the sink, which its supervisor restarts."""

    def __init__(self, settings: SinkSettings, metrics: ServiceMetrics, log: Any) -> None:
        self.settings = settings
        self.m = metrics
        self.log = log

    def handle(self, ev: Event) -> None:
        match ev:
            case ServiceOperation():
                self._operation(ev)
            case ServiceState(path=path, service=service, state=state, detail=detail, value=value):
                if service == "vault" and state == "token_ttl" and value is not None:
                    self.m.vault_ttl.set(value if value > 0 else math.inf)  # Vault says 0 for "never expires"
                else:
                    self.log.info("service state", child=path, service=service, state=state, detail=detail)
            case HealthRound(outcomes=outcomes):
                for o in outcomes:
                    check = f"{o.name}:{o.measurement}"
                    self.m.health_status.labels(check).set(STATUS_VALUE[o.status])
                    if o.measurement == "responseTime":
                        self.m.health_duration.labels(check).observe(o.duration_s)
            case HealthTransition(check=check, previous=previous, current=current, output=output):
                if check:
                    level = self.log.info if current == "pass" else self.log.warning
                    level("health check changed", check=check, previous=previous, current=current, output=output)
                else:
                    level = {"healthy": self.log.info, "degraded": self.log.warning}.get(current, self.log.error)
                    level("health changed", previous=previous, current=current)
            case _:
                pass  # the core's tree events: the daemon logs those; metrics are collected on scrape
        self.m.events.inc()

    def _operation(self, ev: ServiceOperation) -> None:
        m = self.m
        if ev.service == "db":
            m.db_duration.labels(ev.operation, ev.outcome).observe(ev.duration_s)
            ms = ev.duration_s * 1000
            if ms > self.settings.slow_query_warn_ms:
                m.db_slow.labels("warning").inc()
                self.log.warning("slow query", child=ev.path, duration_ms=round(ms, 1), statement=ev.statement)
            elif ms > self.settings.slow_query_info_ms:
                m.db_slow.labels("info").inc()
                self.log.info("slow query", child=ev.path, duration_ms=round(ms, 1), statement=ev.statement)
        elif ev.service == "cache":
            result = ev.result or ("error" if ev.outcome != "ok" else "ok")
            m.cache_requests.labels(ev.operation, result).inc()
            m.cache_duration.labels(ev.operation).observe(ev.duration_s)
        elif ev.service == "storage":
            m.storage_duration.labels(ev.operation, ev.outcome).observe(ev.duration_s)
            if ev.bytes and ev.direction:
                m.storage_bytes.labels(ev.direction).inc(ev.bytes)
        elif ev.service == "vault":
            m.vault_duration.labels(ev.operation).observe(ev.duration_s)
        elif ev.service == "pubsub":
            m.pubsub.labels(ev.direction or "in").inc()
        if ev.outcome != "ok":
            self.log.warning("operation failed", child=ev.path, service=ev.service, operation=ev.operation,
                             outcome=ev.outcome, duration_ms=round(ev.duration_s * 1000, 1))  # fmt: skip


async def run_sink(ctx: ChildContext[Any], settings: SinkSettings) -> None:
    # the daemon shares its registry; alone (a test, an embedding) the sink brings its own
    registry = ctx.extension(METRICS_REGISTRY) or ctx.provide(METRICS_REGISTRY, CollectorRegistry())
    metrics = ServiceMetrics.for_registry(registry)
    sink = Sink(settings, metrics, get_logger())
    sub = ctx.subscribe(maxlen=settings.queue)
    ctx.started(sink)
    reported = 0
    try:
        while True:
            ev = await sub.get()
            sink.handle(ev)
            # a backlog is drained in slices: awaiting a non-empty queue never yields, and a sink that ran
            # through thousands of events at once would stall every other task on the loop
            for _ in range(SLICE - 1):
                nxt = sub.get_nowait()
                if nxt is None:
                    break
                sink.handle(nxt)
            if sub.dropped != reported:
                metrics.dropped.inc(sub.dropped - reported)
                reported = sub.dropped
            await asyncio.sleep(0)
    finally:
        sub.close()
        if sub.dropped != reported:
            metrics.dropped.inc(sub.dropped - reported)


def factory(settings: Mapping[str, Any]) -> WorkerFn:
    parsed = parse_settings(settings)

    async def run(ctx: ChildContext[Any]) -> None:
        await run_sink(ctx, parsed)

    return run
