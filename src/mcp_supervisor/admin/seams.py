"""The seams between the admin port and whoever runs it: what the port may read (:class:`Views`) and ask for
(:class:`Controls`), as protocols with typed records. The daemon implements both; :class:`TreePort` implements
them over a bare :class:`~mcp_supervisor.core.Tree` (a program embedding the core, and the tests).

Records are converted to JSON only in the handlers (``as_dict``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..core import Tree
from .journal import Journal


class Outcome(enum.StrEnum):
    """How a mutation ended: the audit log's ``outcome`` and the ``outcome`` label of ``mcp_admin_mutations_total``."""

    OK = "ok"
    ACCEPTED = "accepted"  # a reload without wait: valid, being applied
    DENIED = "denied"  # no token, a wrong one, or mutations off
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # not valid in the child's state; a failed start
    INVALID = "invalid"  # a reload of an invalid config: nothing changed
    UNAVAILABLE = "unavailable"  # the cluster database did not answer

    @classmethod
    def of_status(cls, status: int) -> Outcome:
        return _BY_STATUS.get(status, cls.OK if status < 400 else cls.CONFLICT)


_BY_STATUS = {
    202: Outcome.ACCEPTED, 400: Outcome.BAD_REQUEST, 401: Outcome.DENIED, 403: Outcome.DENIED,
    404: Outcome.NOT_FOUND, 409: Outcome.CONFLICT, 422: Outcome.INVALID, 502: Outcome.UNAVAILABLE,
    503: Outcome.UNAVAILABLE,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Change:
    """One child a reload touched: ``added``, ``removed``, ``changed`` (restarted), ``failed: ...``."""

    path: str
    change: str


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """A reload's result: applied (``ok``, with what changed) or refused (the error; nothing changed)."""

    ok: bool
    changes: tuple[Change, ...] = ()
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"ok": self.ok, "changes": [{"path": c.path, "change": c.change} for c in self.changes]}
        if not self.ok:
            doc["error"] = self.error
        return doc


@dataclass(frozen=True, slots=True)
class ScaleReport:
    """What a scale did: instances started (new ones at the end) and stopped (highest index first)."""

    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RollReport:
    """What a rolling restart did: the instances replaced, and the one that failed (the roll stopped there)."""

    replaced: tuple[str, ...] = ()
    failed: str | None = None
    error: str | None = None
    untouched: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failed is None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "replaced": list(self.replaced), "failed": self.failed, "error": self.error,
                "untouched": list(self.untouched)}  # fmt: skip


class Record(Protocol):
    """A typed view the port shows as JSON (the fleet's ``ClusterView``)."""

    @property
    def connected(self) -> bool: ...

    @property
    def error(self) -> str | None: ...

    @property
    def conflict(self) -> str | None:
        """Why this node may hold nothing now (another live daemon uses its name), or None."""
        ...

    def as_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class Health(Protocol):
    """What the admin port needs from a health monitor (the tree's own state stands in until one runs).

    A running child whose handle provides it is the daemon's health monitor (the built-in ``health`` worker's does).
    """

    def document(self) -> tuple[dict[str, Any], int]: ...

    def ready(self) -> bool: ...

    async def check_now(self) -> dict[str, Any]: ...


class Views(Protocol):
    """What the admin port reads. Every method is cheap and never awaits."""

    @property
    def tree(self) -> Tree: ...

    @property
    def draining(self) -> bool:
        """True from SIGTERM on: ``/readyz`` answers 503."""
        ...

    @property
    def journal(self) -> Journal | None:
        """Recent events and each child's output (None: ``/events`` and logs answer 503)."""
        ...

    def health(self) -> Health | None:
        """The running health monitor, looked up at each request so that it follows restarts."""
        ...

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type."""
        ...

    def cluster(self) -> Record | None:
        """The fleet as this node last read it (None: not in a cluster)."""
        ...

    def alerts(self) -> dict[str, Any] | None:
        """The alert receivers and their counts (None: alerts are not part of this port)."""
        ...

    def isolated(self) -> Mapping[str, dict[str, Any]]:
        """Each isolated subtree's latest status (``isolation = "process"``), by its supervisor's path: ``pid`` (of
        its process) and ``children`` (their paths under that supervisor's)."""
        ...


class Controls(Protocol):
    """What the admin port may ask for, each behind the token. Errors: ``LookupError`` (no such child, or not one
    with instances, not a singleton), ``ValueError`` (a bad argument), the core's ``OperationError``,
    ``FailedToStartChild`` and ``NotRunning`` (not valid now)."""

    @property
    def token(self) -> str | None:
        """The admin token; None: mutations are off."""
        ...

    def validate(self) -> str | None:
        """Read and check the config file as a reload would, applying nothing: its error, or None."""
        ...

    async def reload(self) -> ReloadReport: ...

    async def scale(self, path: str, instances: int) -> ScaleReport: ...

    async def roll(self, path: str) -> RollReport: ...

    async def move(self, path: str, node: str) -> None: ...

    async def inside(self, path: str, action: str, **args: Any) -> dict[str, Any] | None:
        """``restart``, ``stop``, ``start`` or ``signal`` (``signal``, ``group``) of a child inside an isolated
        subtree, done by its process: ``previous_pid`` and ``child`` (or ``pid``); or its ``exits`` (``ctl why``):
        ``diagnosis``, ``crash_loop``, ``exits``, ``loop_blocked``. None when ``path`` is not inside one."""
        ...

    async def test_alert(self, name: str) -> tuple[bool, str]:
        """Send a test alert to the receiver ``name`` now: whether it went, and its error if not."""
        ...

    def audited(self, action: str, outcome: Outcome, status: int, peer: str, detail: str = "") -> None:
        """A mutation was asked for (logged, counted): every one, whatever its outcome."""
        ...


def find_health(tree: Tree) -> Health | None:
    """The running health monitor's handle, looked up on every request so that it follows restarts."""
    for child in tree.walk():
        if child.alive and isinstance(child.handle, Health):
            return child.handle
    return None


@dataclass(slots=True, kw_only=True)
class TreePort:
    """:class:`Views` and :class:`Controls` over a bare tree: status, health, events and logs, restart/stop/start;
    no config (a reload says so), no instances, no fleet. ``log``: a structured logger (``info(event, **kw)``)."""

    tree: Tree
    log: Any
    token: str | None = None
    journal: Journal | None = None
    draining: bool = False
    metrics_text: bytes = b""
    audit_log: list[tuple[str, Outcome]] = field(default_factory=list)

    def health(self) -> Health | None:
        return find_health(self.tree)

    def metrics(self) -> tuple[bytes, str]:
        return self.metrics_text, "text/plain; version=0.0.4; charset=utf-8"

    def cluster(self) -> Record | None:
        return None

    def alerts(self) -> dict[str, Any] | None:
        return None

    def isolated(self) -> Mapping[str, dict[str, Any]]:
        return {}

    async def inside(self, path: str, action: str, **args: Any) -> dict[str, Any] | None:
        return None

    async def test_alert(self, name: str) -> tuple[bool, str]:
        raise LookupError("alerts are configured in the daemon's config ([[daemon.alerts]])")

    def validate(self) -> str | None:
        return "this admin port runs a tree without a config file: there is nothing to reload"

    async def reload(self) -> ReloadReport:
        return ReloadReport(ok=False, error=self.validate() or "")

    async def scale(self, path: str, instances: int) -> ScaleReport:
        raise LookupError(f"{path!r} is not a child with instances")

    async def roll(self, path: str) -> RollReport:
        raise LookupError(f"{path!r} is not a child with instances")

    async def move(self, path: str, node: str) -> None:
        raise LookupError("this node is not in a cluster (no [cluster] table)")

    def audited(self, action: str, outcome: Outcome, status: int, peer: str, detail: str = "") -> None:
        self.audit_log.append((action, outcome))
        self.log.info(
            "admin mutation", action=action, outcome=str(outcome), status=status, peer=peer, **audit_fields(detail)
        )


def audit_fields(detail: str) -> dict[str, str]:
    """The audit line's optional ``detail`` (an error message), for implementations of :meth:`Controls.audited`."""
    return {"detail": detail} if detail else {}
