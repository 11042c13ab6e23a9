"""Events the service workers emit for telemetry (operation, outcome, duration; never secrets or raw keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..core import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceOperation(Event):
    """One operation of a service: ``service`` is db | cache | storage | vault | pubsub."""

    service: str
    operation: str
    outcome: Literal["ok", "error", "timeout"] = "ok"
    duration_s: float = 0.0
    result: str | None = None  # cache: hit | miss
    bytes: int = 0
    direction: Literal["in", "out"] | None = None
    statement: str | None = None  # SQL text without its arguments
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceState(Event):
    """A service's own state change (connected, disconnected, token renewed, ...)."""

    service: str
    state: str
    detail: str = ""
    value: float | None = None
