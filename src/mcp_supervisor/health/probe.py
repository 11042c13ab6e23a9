"""The probe contract between a service's handle and the health monitor (standard library only).

A handle that can tell whether its service works defines ``async def probe(self) -> ProbeResult | None``: None or a
``pass`` result is healthy; raising, or timing out, is a failure (the monitor bounds every probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What a probe may report beyond "it answered". Returning None from a probe means pass."""

    status: Status = "pass"
    observed_value: Any = None
    observed_unit: str | None = None
    output: str = ""
    measurement: str = "responseTime"
    component_type: str = "component"


@runtime_checkable
class Probeable(Protocol):
    async def probe(self) -> ProbeResult | None: ...
