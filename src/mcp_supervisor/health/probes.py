"""Probes are plain coroutines; :func:`run_check` alone owns their timing, timeout and outcome."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..core import describe
from .probe import ProbeResult, Status


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckOutcome:
    name: str
    status: Status
    duration_s: float
    output: str
    measurement: str
    component_type: str
    observed_value: Any
    observed_unit: str | None
    at: float  # wall clock


async def run_check(
    name: str, probe: Callable[[], Awaitable[ProbeResult | None]], timeout: float, component_type: str = "component"
) -> CheckOutcome:
    """Run one probe with its own timeout; every failure becomes a ``fail`` outcome, never an exception."""
    t0 = time.perf_counter()
    result: ProbeResult | None = None
    status: Status
    output = ""
    try:
        async with asyncio.timeout(timeout):
            result = await probe()
        status = result.status if result is not None else "pass"
        output = result.output if result is not None else ""
    except TimeoutError:
        status, output = "fail", f"timed out after {timeout:g}s"
    except Exception as e:  # noqa: BLE001 - a failing probe is an outcome
        status, output = "fail", describe(e)[:300]
    duration = time.perf_counter() - t0
    if result is not None and result.observed_value is not None:
        value, unit, measurement = result.observed_value, result.observed_unit, result.measurement
    else:
        value, unit, measurement = round(duration * 1000, 3), "ms", "responseTime"
    return CheckOutcome(
        name=name,
        status=status,
        duration_s=duration,
        output=output,
        measurement=measurement,
        component_type=result.component_type if result is not None else component_type,
        observed_value=value,
        observed_unit=unit,
        at=time.time(),
    )


class LoopLag:
    """Event-loop lag: how late a periodic timer fires (trap T6: a blocked loop freezes everything)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, loop.time() - t0 - self.interval)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
