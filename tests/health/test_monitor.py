"""The health monitor: concurrent bounded probes, criticality, unknown before the first round, health+json."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from mcp_supervisor.core import SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.health.monitor import HealthMonitor, HealthTransition, factory
from mcp_supervisor.health.probe import ProbeResult
from mcp_supervisor.testing import Recorder, until


class Service:
    """A worker whose handle has a scriptable probe."""

    def __init__(self, mode: str = "pass") -> None:
        self.mode = mode
        self.calls = 0
        self.gate = asyncio.Event()

    async def probe(self) -> ProbeResult | None:
        self.calls += 1
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "block":
            await self.gate.wait()
        if self.mode == "fail":
            raise ConnectionError("connection refused")
        if self.mode == "warn":
            return ProbeResult(status="warn", observed_value=95, observed_unit="percent", measurement="utilization")
        return None

    async def run(self, ctx: Any) -> None:
        ctx.started(self)
        await asyncio.Event().wait()


def tree_with(services: dict[str, Service], **settings: Any) -> Tree:
    children: list[Any] = [WorkerSpec(id=k, run=s.run) for k, s in services.items()]
    children.append(WorkerSpec(id="health", run=factory({"interval": 3600, "system": False, **settings})))
    return Tree(SupervisorSpec(id="root", children=children))


async def monitor_of(tree: Tree) -> HealthMonitor:
    handle = await tree.handle("health")
    assert isinstance(handle, HealthMonitor)
    return handle


async def test_a_hanging_probe_is_cut_at_its_timeout_while_the_others_report_on_time() -> None:
    services = {"db": Service("pass"), "cache": Service("hang"), "s3": Service("pass")}
    async with tree_with(services, timeout=0.3) as tree:
        mon = await monitor_of(tree)
        t0 = time.monotonic()
        snap = await mon.round()
        took = time.monotonic() - t0
    by_name = {o.name: o for o in snap.outcomes}
    assert by_name["cache"].status == "fail" and by_name["cache"].output == "timed out after 0.3s"
    assert by_name["db"].status == "pass" and by_name["db"].duration_s < 0.2
    assert by_name["s3"].status == "pass" and by_name["s3"].duration_s < 0.2
    assert 0.3 <= took < 1.5  # concurrent: one timeout, not the sum


@pytest.mark.parametrize(
    ("modes", "critical", "overall"),
    [
        ({"db": "pass", "cache": "pass"}, ["db"], "healthy"),
        ({"db": "pass", "cache": "fail"}, ["db"], "degraded"),
        ({"db": "pass", "cache": "warn"}, ["db"], "degraded"),
        ({"db": "fail", "cache": "pass"}, ["db"], "unhealthy"),
        ({"db": "fail", "cache": "pass"}, [], "degraded"),
    ],
)
async def test_overall_state_by_criticality(modes: dict[str, str], critical: list[str], overall: str) -> None:
    async with tree_with({k: Service(m) for k, m in modes.items()}, critical=critical) as tree:
        mon = await monitor_of(tree)
        snap = await mon.round()
        assert snap.overall == overall
        doc, code = mon.document()
        assert doc["status"] == {"healthy": "pass", "degraded": "warn", "unhealthy": "fail"}[overall]
        assert code == (503 if overall == "unhealthy" else 200)
        assert mon.ready() is (overall != "unhealthy")


async def test_unknown_until_the_first_round_completes() -> None:
    slow = Service("block")
    async with tree_with({"db": slow}, critical=["db"], timeout=30) as tree:
        mon = await monitor_of(tree)
        await until(lambda: slow.calls > 0, what="the first probe")
        assert mon.snapshot.overall == "unknown" and not mon.ready()
        doc, code = mon.document()
        assert code == 503 and doc["status"] == "fail" and "unknown" in doc["notes"][0]
        slow.gate.set()
        await until(lambda: mon.snapshot.overall != "unknown", what="the first round")
        after = mon.snapshot  # re-read: the monitor replaced it
        assert after.overall == "healthy" and mon.ready()


async def test_transitions_are_events_and_steady_state_is_quiet() -> None:
    flappy = Service("pass")
    tree = tree_with({"cache": flappy})
    rec = Recorder(tree.bus)
    async with tree:
        mon = await monitor_of(tree)
        for mode in ["pass", "pass", "fail", "fail", "fail", "pass", "fail", "pass", "pass"]:
            flappy.mode = mode
            await mon.round()
    changes = [(e.previous, e.current) for e in rec.of(HealthTransition) if e.check == "cache:responseTime"]
    assert changes == [("unknown", "pass"), ("pass", "fail"), ("fail", "pass"), ("pass", "fail"), ("fail", "pass")]
    overall = [(e.previous, e.current) for e in rec.of(HealthTransition) if e.check == ""]
    assert overall[0] == ("unknown", "healthy") and len(overall) == 5


ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_health_document_follows_the_health_json_field_rules() -> None:
    services = {"db": Service("pass"), "cache": Service("warn"), "s3": Service("fail")}
    tree = Tree(
        SupervisorSpec(
            id="root",
            children=[
                *(WorkerSpec(id=k, run=s.run) for k, s in services.items()),
                WorkerSpec(id="health", run=factory({"interval": 3600, "critical": ["db"]})),
            ],
        )
    )
    async with tree:
        mon = await monitor_of(tree)
        await mon.round()
        doc, _ = mon.document()
    assert doc["status"] in ("pass", "warn", "fail")
    assert doc["checks"], "checks must not be empty"
    for key, entries in doc["checks"].items():
        component, _, measurement = key.partition(":")
        assert component and measurement and ":" not in measurement
        for entry in entries:
            assert entry["status"] in ("pass", "warn", "fail")
            assert entry["componentType"] in ("component", "datastore", "system")
            assert "observedValue" in entry and "observedUnit" in entry
            assert ISO.match(entry["time"]), entry["time"]
    assert {"db:responseTime", "cache:utilization", "s3:responseTime", "system:memory", "system:eventLoopLag"} <= set(
        doc["checks"]
    )
    assert doc["checks"]["s3:responseTime"][0]["output"] == "ConnectionError: connection refused"


def test_bad_settings_are_rejected_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match="interval: must be a number > 0"):
        factory({"interval": 0})
    with pytest.raises(ValueError, match="intervall: unknown setting"):
        factory({"intervall": 5})
    with pytest.raises(ValueError, match="critical: must be an array of strings, got a string"):
        factory({"critical": "db"})
