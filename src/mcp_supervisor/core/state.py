"""A child's state and the typed records that describe the tree: what ``/status``, metrics, health and the CLI read.

``NodeStatus.as_dict()`` is the JSON shape of ``GET /status`` (see the admin API's OpenAPI document);
``NodeStatus.from_dict()`` reads it back, so a client works on the same record the daemon built.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .events import ExitKind


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class LastExit:
    reason: ExitKind
    detail: str
    at: float | None  # wall clock


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """One node of the tree as observed at one moment (a supervisor carries its children)."""

    id: str
    path: str
    kind: str  # supervisor | worker | process
    state: State
    restarts: int = 0
    uptime_s: float = 0.0
    last_exit: LastExit | None = None
    pid: int | None = None  # processes only
    escaped_pids: tuple[int, ...] = ()  # processes: descendants that left the process group
    next_restart_at: float | None = None  # wall clock, while restarting with a delay
    strategy: str | None = None  # supervisors only
    children: tuple[NodeStatus, ...] = field(default=())

    def walk(self) -> Iterator[NodeStatus]:
        """This node and every node below it, depth first."""
        yield self
        for c in self.children:
            yield from c.walk()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "path": self.path,
            "kind": self.kind,
            "state": str(self.state),
            "restarts": self.restarts,
            "uptime_s": self.uptime_s,
            "last_exit": (
                {"reason": self.last_exit.reason, "detail": self.last_exit.detail, "at": self.last_exit.at}
                if self.last_exit is not None
                else None
            ),
        }
        if self.kind == "process":
            out["pid"] = self.pid
            if self.escaped_pids:
                out["escaped_pids"] = list(self.escaped_pids)
        if self.next_restart_at is not None:
            out["next_restart_at"] = self.next_restart_at
        if self.kind == "supervisor":
            out["strategy"] = self.strategy
            out["children"] = [c.as_dict() for c in self.children]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeStatus:
        last = d.get("last_exit")
        return cls(
            id=d["id"],
            path=d["path"],
            kind=d["kind"],
            state=State(d["state"]),
            restarts=d.get("restarts", 0),
            uptime_s=d.get("uptime_s", 0.0),
            last_exit=LastExit(last["reason"], last.get("detail", ""), last.get("at")) if last else None,
            pid=d.get("pid"),
            escaped_pids=tuple(d.get("escaped_pids", ())),
            next_restart_at=d.get("next_restart_at"),
            strategy=d.get("strategy"),
            children=tuple(cls.from_dict(c) for c in d.get("children", ())),
        )


@dataclass(frozen=True, slots=True)
class ChildView:
    """A read-only view of one child for workers that look at the tree (the health monitor finds probes so)."""

    path: str
    kind: str
    state: State
    handle: Any  # what the child passed to ctx.started() (None until it is running)


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    children: int
    running: int
    restarting: int
    restarts_in_window: int  # attempts the intensity window holds now
    inbox: int  # messages waiting for the supervisor (exits, due restarts, requests)


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """OTP's ``count_children``: specs, running children, and how many are supervisors or workers."""

    specs: int
    active: int
    supervisors: int
    workers: int
