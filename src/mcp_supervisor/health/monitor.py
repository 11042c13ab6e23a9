"""``worker = "health"``: every round runs all probes concurrently, each bounded, and keeps a snapshot.

The state is ``unknown`` until the first round completes (never "healthy" before checking anything). A critical
failure makes the platform ``unhealthy``; a non-critical failure or any warning ``degraded``; else ``healthy``.
Transitions are emitted as :class:`HealthTransition` events (telemetry logs them); steady state is quiet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config.settings import Settings
from ..core import ChildContext, Event, NoSuchPath, NotRunning, State, WorkerFn
from .probe import ProbeResult
from .probes import CheckOutcome, LoopLag, open_fds, rss_bytes, run_check

Overall = Literal["unknown", "healthy", "degraded", "unhealthy"]
SYSTEM = "system"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthTransition(Event):
    """A check's status, or the overall state, changed (``check`` is "" for the overall state)."""

    check: str
    previous: str
    current: str
    output: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthRound(Event):
    """One completed round: per-check status and duration, for metrics."""

    overall: str
    outcomes: tuple[CheckOutcome, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemLimits:
    rss_warn_mb: float = 1024.0
    fds_warn: float = 4096
    tasks_warn: float = 10_000
    loop_lag_warn_ms: float = 250.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSettings:
    interval: float = 30.0
    timeout: float = 5.0
    checks: tuple[str, ...] | None = None  # child paths; None: every running child whose handle has probe()
    critical: frozenset[str] = field(default_factory=frozenset)
    system: SystemLimits | None = field(default_factory=SystemLimits)


_SYSTEM_KEYS = ("rss_warn_mb", "fds_warn", "tasks_warn", "loop_lag_warn_ms")
SETTINGS_KEYS = frozenset({"interval", "timeout", "checks", "critical", "system"})


def parse_settings(settings: Mapping[str, Any]) -> HealthSettings:
    s = Settings(settings, SETTINGS_KEYS)
    checks = s.strings("checks")
    critical = s.strings("critical", ()) or ()
    system: SystemLimits | None
    if settings.get("system") is False:
        system = None
    elif isinstance(settings.get("system", {}), Mapping):
        limits, defaults = s.section("system", _SYSTEM_KEYS), SystemLimits()
        system = SystemLimits(
            **{k: limits.number(k, getattr(defaults, k), 0.0, 1e12, above=True) for k in _SYSTEM_KEYS}
        )
    else:
        raise s.error("system", "must be a table of warn thresholds or false")
    return HealthSettings(
        interval=s.seconds("interval", 30.0, above=True),
        timeout=s.seconds("timeout", 5.0, above=True),
        checks=tuple(c.strip("/") for c in checks) if checks is not None else None,
        critical=frozenset(critical),
        system=system,
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    overall: Overall
    outcomes: tuple[CheckOutcome, ...]
    taken_at: float  # monotonic
    wall: float

    def age(self) -> float:
        return time.monotonic() - self.taken_at


_UNKNOWN = Snapshot("unknown", (), 0.0, 0.0)
_HEALTH_STATUS = {"healthy": "pass", "degraded": "warn", "unhealthy": "fail", "unknown": "fail"}


class HealthMonitor:
    """The monitor's handle: what ``/readyz``, ``/health`` and ``POST /health/check`` read."""

    def __init__(self, settings: HealthSettings, ctx: ChildContext[Any]) -> None:
        self.settings = settings
        self.ctx = ctx
        self.snapshot = _UNKNOWN
        self.draining = False
        self.lag = LoopLag()
        self._lock = asyncio.Lock()
        self._last: dict[str, str] = {}
        self._known: list[str] = []

    # -- probes -------------------------------------------------------------------------------------------
    def _targets(self) -> list[tuple[str, Callable[[], Awaitable[ProbeResult | None]]]]:
        names = self.settings.checks
        if names is None:
            # every running child with a probe, and every one seen before: one that is restarting now fails
            # its check ("not running") instead of silently dropping out of the report
            for p, h in _running_handles(self.ctx):
                if callable(getattr(h, "probe", None)) and p not in self._known:
                    self._known.append(p)
            names = tuple(self._known)
        return [(name, self._probe_for(name)) for name in names]

    def _probe_for(self, path: str) -> Callable[[], Awaitable[ProbeResult | None]]:
        async def probe() -> ProbeResult | None:
            try:
                handle = await self.ctx.handle(path)
            except (NotRunning, NoSuchPath) as e:
                return ProbeResult(status="fail", output=str(e))
            fn = getattr(handle, "probe", None)
            if callable(fn):
                result: ProbeResult | None = await fn()
                return result
            return None  # no probe of its own: running is healthy

        return probe

    async def _system(self) -> list[CheckOutcome]:
        limits = self.settings.system
        if limits is None:
            return []
        now = time.time()
        rss = rss_bytes()
        fds = open_fds()
        tasks = len(asyncio.all_tasks())
        lag_ms = self.lag.take() * 1000

        def one(measure: str, value: float, unit: str, warn: bool) -> CheckOutcome:
            return CheckOutcome(
                name=SYSTEM, status="warn" if warn else "pass", duration_s=0.0,
                output="above its warn threshold" if warn else "", measurement=measure, component_type="system",
                observed_value=round(value, 3), observed_unit=unit, at=now,
            )  # fmt: skip

        return [
            one("memory", rss / 2**20, "MiB", rss / 2**20 > limits.rss_warn_mb),
            one("fileDescriptors", fds, "count", fds > limits.fds_warn),
            one("tasks", tasks, "count", tasks > limits.tasks_warn),
            one("eventLoopLag", lag_ms, "ms", lag_ms > limits.loop_lag_warn_ms),
        ]

    async def round(self) -> Snapshot:
        """Run every check concurrently, each within the timeout; publish the snapshot."""
        async with self._lock:
            targets = self._targets()
            tasks = [run_check(name, probe, self.settings.timeout) for name, probe in targets]
            results = list(await asyncio.gather(*tasks))
            results += await self._system()
            snap = Snapshot(self._overall(results), tuple(results), time.monotonic(), time.time())
            self._publish(snap)
            return snap

    def _overall(self, outcomes: list[CheckOutcome]) -> Overall:
        state: Overall = "healthy"
        for o in outcomes:
            if o.status == "fail" and o.name in self.settings.critical:
                return "unhealthy"
            if o.status != "pass":
                state = "degraded"
        return state

    def _publish(self, snap: Snapshot) -> None:
        emit = self.ctx.emit
        seen: dict[str, str] = {}
        for o in snap.outcomes:
            key = f"{o.name}:{o.measurement}"
            seen[key] = o.status
            before = self._last.get(key, "unknown")
            if before != o.status:
                emit(HealthTransition(path=self.ctx.path, check=key, previous=before, current=o.status,
                                          output=o.output))  # fmt: skip
        overall_before = self.snapshot.overall
        self._last = seen
        self.snapshot = snap
        if overall_before != snap.overall:
            emit(HealthTransition(path=self.ctx.path, check="", previous=overall_before, current=snap.overall))
        emit(HealthRound(path=self.ctx.path, overall=snap.overall, outcomes=snap.outcomes))

    # -- the admin port's view ----------------------------------------------------------------------------
    def ready(self) -> bool:
        snap = self.snapshot
        if self.draining or snap.overall == "unknown":
            return False
        return not any(o.status == "fail" and o.name in self.settings.critical for o in snap.outcomes)

    def document(self) -> tuple[dict[str, Any], int]:
        snap = self.snapshot
        status = _HEALTH_STATUS[snap.overall]
        checks: dict[str, list[dict[str, Any]]] = {}
        for o in snap.outcomes:
            entry = {
                "componentId": o.name,
                "componentType": o.component_type,
                "observedValue": o.observed_value,
                "observedUnit": o.observed_unit,
                "status": o.status,
                "time": _iso(o.at),
            }
            if o.output:
                entry["output"] = o.output
            checks.setdefault(f"{o.name}:{o.measurement}", []).append(entry)
        doc: dict[str, Any] = {
            "status": status,
            "serviceId": "mcp-supervisor",
            "description": f"platform {snap.overall}",
            "checks": checks,
        }
        if snap.overall == "unknown":
            doc["notes"] = ["unknown: the first health round has not completed yet"]
        else:
            doc["notes"] = [f"snapshot age {snap.age():.1f}s"]
        return doc, 503 if status == "fail" else 200

    async def check_now(self) -> dict[str, Any]:
        await self.round()
        return self.document()[0]

    async def probe(self) -> ProbeResult | None:
        return None  # the monitor itself is healthy while it runs


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


def _running_handles(ctx: ChildContext[Any]) -> list[tuple[str, Any]]:
    return sorted(
        (v.path, v.handle)
        for v in ctx.views()
        if v.state is State.RUNNING and v.handle is not None and not isinstance(v.handle, HealthMonitor)
    )


async def run_monitor(ctx: ChildContext[HealthMonitor], settings: HealthSettings) -> None:
    monitor = HealthMonitor(settings, ctx)
    loop = asyncio.get_running_loop()
    lag_task = loop.create_task(monitor.lag.run())
    ctx.started(monitor)  # usable at once: it reports "unknown" until the first round completes
    try:
        start = loop.time()
        n = 0
        while True:
            await monitor.round()
            n += 1
            # the next round on a monotonic grid; a slow round skips the slots it overran
            slot = max(n, int((loop.time() - start) / settings.interval) + 1)
            n = slot
            await asyncio.sleep(max(0.0, start + slot * settings.interval - loop.time()))
    finally:
        lag_task.cancel()


def factory(settings: Mapping[str, Any]) -> WorkerFn:
    parsed = parse_settings(settings)

    async def run(ctx: ChildContext[Any]) -> None:
        await run_monitor(ctx, parsed)

    return run
