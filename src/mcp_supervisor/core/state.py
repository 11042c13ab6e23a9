"""A child's state and the typed records that describe the tree: what ``/status``, metrics, health and the CLI read.

``NodeStatus.as_dict()`` is the JSON shape of ``GET /status`` (see the admin API's OpenAPI document);
``NodeStatus.from_dict()`` reads it back, so a client works on the same record the daemon built.
"""

from __future__ import annotations

import dataclasses
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
    cause: str = ""  # core.forensics.Cause


@dataclass(frozen=True, slots=True)
class Resources:
    """What an OS child's processes use now (summed over its group and detached descendants)."""

    cpu_s: float
    rss_bytes: int
    peak_rss_bytes: int
    fds: int | None  # counted every few seconds; None until the first count
    threads: int
    processes: int
    rss_history: tuple[int, ...] = ()  # a sample every few seconds, oldest first

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_s": round(self.cpu_s, 2), "rss_bytes": self.rss_bytes, "peak_rss_bytes": self.peak_rss_bytes,
                "fds": self.fds, "threads": self.threads, "processes": self.processes,
                "rss_history": list(self.rss_history)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class CrashLoop:
    """A crash-loop episode going on: since when (wall clock), how many similar failures, their cause and line."""

    since: float
    count: int
    cause: str
    line: str


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
    detached_pids: tuple[int, ...] = ()  # processes: descendants that left its process group (setsid)
    next_restart_at: float | None = None  # wall clock, while restarting with a delay
    strategy: str | None = None  # supervisors only
    resources: Resources | None = None  # processes only
    exits: Mapping[str, int] = field(default_factory=dict)  # ends by cause over the child's life
    crash_loop: CrashLoop | None = None
    isolated: bool = False  # an isolated supervisor's process: its children are those its process told (splice)
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
                {"reason": self.last_exit.reason, "detail": self.last_exit.detail, "at": self.last_exit.at,
                 "cause": self.last_exit.cause}
                if self.last_exit is not None
                else None
            ),
            "exits": dict(self.exits),
            "crash_loop": (
                {"since": self.crash_loop.since, "count": self.crash_loop.count, "cause": self.crash_loop.cause,
                 "line": self.crash_loop.line}
                if self.crash_loop is not None
                else None
            ),
        }  # fmt: skip
        if self.kind == "process":
            out["pid"] = self.pid
            if self.detached_pids:
                out["detached_pids"] = list(self.detached_pids)
            out["resources"] = self.resources.as_dict() if self.resources is not None else None
        if self.next_restart_at is not None:
            out["next_restart_at"] = self.next_restart_at
        if self.kind == "supervisor":
            out["strategy"] = self.strategy
            out["children"] = [c.as_dict() for c in self.children]
        elif self.isolated:
            out["isolated"] = True
            out["children"] = [c.as_dict() for c in self.children]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeStatus:
        last = d.get("last_exit")
        res, loop = d.get("resources"), d.get("crash_loop")
        return cls(
            id=d["id"],
            path=d["path"],
            kind=d["kind"],
            state=State(d["state"]),
            restarts=d.get("restarts", 0),
            uptime_s=d.get("uptime_s", 0.0),
            last_exit=LastExit(last["reason"], last.get("detail", ""), last.get("at"), last.get("cause", ""))
            if last
            else None,
            pid=d.get("pid"),
            detached_pids=tuple(d.get("detached_pids", ())),
            next_restart_at=d.get("next_restart_at"),
            strategy=d.get("strategy"),
            resources=Resources(
                res["cpu_s"],
                res["rss_bytes"],
                res["peak_rss_bytes"],
                res.get("fds"),
                res["threads"],
                res["processes"],
                tuple(res.get("rss_history", ())),
            )
            if res
            else None,
            exits=dict(d.get("exits", {})),
            crash_loop=CrashLoop(loop["since"], loop["count"], loop["cause"], loop["line"]) if loop else None,
            isolated=bool(d.get("isolated", False)),
            children=tuple(cls.from_dict(c) for c in d.get("children", ())),
        )


def splice(node: NodeStatus, told: Mapping[str, Mapping[str, Any]]) -> NodeStatus:
    """``node`` with each isolated subtree's children under its supervisor's node, as its process last told them
    (``told``: by the supervisor's path, the teller's ``pid`` and ``children`` as :meth:`NodeStatus.as_dict` writes
    them) — only while that process is the node's own (the same pid, running); a status that cannot be read is left
    out. What ``/status`` and the metrics show."""
    if not told:
        return node
    doc = told.get(node.path)
    if doc is not None and node.state is State.RUNNING and doc.get("pid") == node.pid:
        try:
            kids = tuple(NodeStatus.from_dict(c) for c in doc["children"])
        except (KeyError, TypeError, ValueError):
            return node
        return dataclasses.replace(node, isolated=True, children=kids)
    if not node.children:
        return node
    return dataclasses.replace(node, children=tuple(splice(c, told) for c in node.children))


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
