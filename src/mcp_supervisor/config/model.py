"""The config as the daemon uses it: frozen, validated objects, and the error every failure becomes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ..core import Address, ChildSpec, ProcessSpec, SupervisorFlags, SupervisorSpec, WorkerFn

DEFAULT_CONFIG_PATH = "config/supervision.toml"
DEFAULT_ADMIN = "127.0.0.1:7080"
DEFAULT_ADDRESS = Address(host="127.0.0.1", port=7080)
LOG_LINES = 1000
LOG_BYTES = 256 * 1024
INSTANCE_SEP = "#"  # instance i of a replicated child "web" is "web#i"
MAX_INSTANCES = 1024

WorkerFactory: TypeAlias = Callable[[Mapping[str, Any]], WorkerFn]
"""A worker plugin: called once per load with the child's ``config`` table; returns the worker's ``run(ctx)``.
It validates its settings and raises ``ValueError`` (naming the setting) for bad ones."""


class ConfigError(Exception):
    """An invalid config file. The message names the file, the line when found, and the key path."""

    def __init__(self, file: str, key: str, message: str, line: int | None = None) -> None:
        self.file = file
        self.key = key
        self.line = line
        message = _one_line(message)
        key = _one_line(key)  # a key of the file may hold control characters too
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def _one_line(text: str) -> str:
    """A message is one log line: control characters (a factory's own text may hold some) are escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketConfig:
    """A listening socket the daemon holds for its OS children (``[[daemon.sockets]]``)."""

    name: str
    listen: Address
    backlog: int = 1024
    mode: int | None = None  # a unix socket's file mode


ALERT_EVENTS = ("crash-loop", "recovered", "gave-up", "start-failure", "oom-kill", "health", "singleton-moved",
                "singleton-unheld", "singleton-overlap", "reload-failed")  # fmt: skip
"""What an alert may be ``on``: a crash loop began / ended (``recovered``), a supervisor gave up (its intensity
was exceeded), a start failed, the OOM killer took a child, a health check or the overall health changed, a
singleton began running on this node, no node held a singleton for longer than the failover bound, more than one
node held it, a reload was refused."""
DEFAULT_ALERT_EVENTS = ("crash-loop", "recovered", "gave-up", "oom-kill", "singleton-unheld", "singleton-overlap",
                        "reload-failed")  # fmt: skip
ALERT_FORMATS = ("json", "slack", "discord", "ntfy")


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertConfig:
    """One ``[[daemon.alerts]]`` entry: what it is ``on``, for which paths, and where it goes."""

    name: str
    on: tuple[str, ...] = DEFAULT_ALERT_EVENTS
    paths: tuple[str, ...] = ()  # globs; empty: every path
    webhook: str | None = None  # a secret: redacted from everything the daemon writes
    format: str = "json"
    headers: tuple[tuple[str, str], ...] = ()  # their values are secrets too
    exec: tuple[str, ...] = ()
    rate: int = 20  # alerts at most per `per` seconds (more are dropped and counted)
    per: float = 600.0
    retries: int = 5  # attempts after the first, with exponential backoff from 1 s (capped at 60 s)
    timeout: float = 10.0  # seconds for one attempt

    def receiver(self) -> str:
        """Where it goes, as it may be shown: a webhook's scheme and host (its path and query are secret)."""
        if self.webhook is not None:
            scheme, _, rest = self.webhook.partition("://")
            return f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}/…"
        return f"exec {self.exec[0]}" if self.exec else "?"


MCP_MUTATIONS = ("restart", "stop", "start", "signal", "scale", "reload")
"""What ``[daemon.mcp] allow`` may list: the MCP server's mutating tools (none by default)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    admin: Address = DEFAULT_ADDRESS
    admin_token_file: str | None = None
    exit_code: str = "daemon"  # "child": when the root gives up, exit with the status of the child that made it
    allow_remote_admin: bool = False
    log_format: str = "auto"
    log_level: str = "info"
    sockets: tuple[SocketConfig, ...] = ()
    alerts: tuple[AlertConfig, ...] = ()
    mcp_allow: tuple[str, ...] = ()  # [daemon.mcp] allow: the MCP server's mutating tools


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaSet:
    """An OS-process child with ``instances``: its instances are the children ``path#0 … path#N-1``."""

    path: str  # the child's path without the instance suffix
    instances: int
    rolling: bool  # a reload that changes it replaces one instance at a time
    make: Callable[[int], ProcessSpec]  # the spec of instance i ({instance} expanded)

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """``[cluster]``: this node's place in a fleet sharing one PostgreSQL (fleet singletons, one view)."""

    dsn: str = field(repr=False)
    node: str
    lease: float = 10.0
    heartbeat: float = 10.0 / 3
    schema: str = "mcp_cluster"
    notify: bool = False  # LISTEN/NOTIFY wakes the others at a release or a move (not behind transaction poolers)


@dataclass(frozen=True, slots=True, kw_only=True)
class Singleton:
    """A child with ``singleton = true``: kept out of the tree until this node holds its lease."""

    path: str
    spec: ChildSpec
    prefer: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()  # the nodes that may hold it: names or glob patterns (empty: every node)
    fingerprint: str = ""  # what a reload compares (a worker's spec holds a new function at every load)

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildEntry:
    """One node of the configured tree with the fingerprint reload compares (spec, command or config changed)."""

    path: str
    kind: str
    fingerprint: str
    flags: SupervisorFlags | None = None
    worker: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # a worker's expanded config table
    log_lines: int = LOG_LINES  # the child's output ring (GET /children/{path}/logs): lines kept ...
    log_bytes: int = LOG_BYTES  # ... and bytes kept


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    file: str
    daemon: DaemonConfig
    tree: SupervisorSpec
    entries: Mapping[str, ChildEntry] = field(default_factory=dict)
    replicas: Mapping[str, ReplicaSet] = field(default_factory=dict)  # by the child's path (no instance suffix)
    cluster: ClusterConfig | None = None
    singletons: Mapping[str, Singleton] = field(default_factory=dict)  # by path; not in ``tree`` until leased
    isolated: Mapping[str, SupervisorSpec] = field(default_factory=dict)  # isolation = "process": the subtrees
    secrets: frozenset[str] = frozenset()
    """Values the config marks or names as secret: what the daemon redacts from everything it writes."""
    warnings: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()  # the files `include` read, in order

    def subtree(self, path: str) -> Config:
        """The isolated subtree at ``path`` as a config of its own (as its process runs it): its supervisor the
        root, its children's entries and replica sets by their paths under it."""
        cut = len(path) + 1

        def under(keys: Mapping[str, Any]) -> dict[str, Any]:
            return {k[cut:]: v for k, v in keys.items() if k.startswith(path + "/")}

        own = dataclasses.replace(self.entries[path], path="", kind="supervisor")
        return dataclasses.replace(self, tree=self.isolated[path], entries={"": own, **under(self.entries)},
                                   replicas=under(self.replicas), singletons={}, isolated={})  # fmt: skip
