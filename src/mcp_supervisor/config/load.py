"""Loading ``supervision.toml``: read it within bounds, parse, expand ``${VAR}``, validate every key, build the specs.

Every failure, foreseen or not, is a :class:`ConfigError` naming the file, the line and the key path.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core import Address, SpecError, SupervisorSpec, describe
from .alerts import alerts
from .children import SUP_FLAGS, child, flags_of, included_children
from .envfile import env_files, read_env_files
from .includes import attach, check_parents, read_includes
from .locate import too_deep
from .model import (
    DEFAULT_ADMIN,
    DEFAULT_CONFIG_PATH,
    MCP_MUTATIONS,
    ChildEntry,
    ClusterConfig,
    Config,
    ConfigError,
    DaemonConfig,
    SocketConfig,
    WorkerFactory,
)
from .reader import Reader, check_keys, numbers, typed
from .settings import is_secret_key, kind_of, read_small_file, show

MAX_NESTING = 64  # brackets and braces in the file
MAX_FILE = 4 * 2**20  # bytes

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MIN_TOKEN = 16  # characters of the admin token


_SOCKET_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


def _sockets(ctx: Reader, value: Any) -> tuple[SocketConfig, ...]:  # noqa: C901 - one [[daemon.sockets]] table, each key checked in file order
    """``[[daemon.sockets]]``: name, listen ("host:port" or "unix:/path"), backlog, mode (unix only)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ctx.error("daemon.sockets", "must be an array of tables ([[daemon.sockets]])")
    out: list[SocketConfig] = []
    for i, t in enumerate(value):
        k = f"daemon.sockets[{i}]"
        if not isinstance(t, dict):
            raise ctx.error(k, f"must be a table, got {kind_of(t)}")
        check_keys(ctx, t, {"name", "listen", "backlog", "mode"}, k)
        name, listen = t.get("name"), t.get("listen")
        if not isinstance(name, str) or not _SOCKET_NAME.fullmatch(name):
            raise ctx.error(f"{k}.name", f"must be a name of letters, digits, '-' and '_', got {show('', name)}")
        if any(s.name == name for s in out):
            raise ctx.error(f"{k}.name", f"{name!r} is declared twice")
        if not isinstance(listen, str):
            raise ctx.error(f"{k}.listen", f'must be "host:port" or "unix:/absolute/path", got {kind_of(listen)}')
        try:
            address = Address.parse(listen)
        except ValueError as e:
            raise ctx.error(f"{k}.listen", str(e)) from None
        nums = numbers(t, ("backlog", "mode"))
        backlog = nums.get("backlog", 1024)
        if isinstance(backlog, bool) or not isinstance(backlog, int) or not 1 <= backlog <= 65535:
            raise ctx.error(f"{k}.backlog", f"must be an integer 1..65535, got {show('', backlog)}")
        mode = nums.get("mode")
        if isinstance(mode, str):
            mode = int(mode, 8) if re.fullmatch(r"[0-7]{3,4}", mode) else mode
        if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777):
            raise ctx.error(f"{k}.mode", f'must be a file mode like "660", got {show("", mode)}')
        if mode is not None and not address.unix:
            raise ctx.error(f"{k}.mode", "applies only to a unix socket")
        out.append(SocketConfig(name=name, listen=address, backlog=backlog, mode=mode))
    return tuple(out)


_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _cluster(ctx: Reader, table: Any) -> ClusterConfig | None:
    """``[cluster]``: dsn (or dsn_file), node, lease, heartbeat, schema, notify."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ctx.error("cluster", "must be a table")
    check_keys(ctx, table, {"dsn", "dsn_file", "node", "lease", "heartbeat", "schema", "notify"}, "cluster")
    if ctx.host_checks and importlib.util.find_spec("asyncpg") is None:
        raise ctx.error("cluster", "fleet mode needs asyncpg, which is not installed: "
                                   "pip install 'mcp-supervisor-otp[postgres]'")  # fmt: skip
    if ("dsn" in table) == ("dsn_file" in table):
        raise ctx.error("cluster", 'needs exactly one of "dsn" or "dsn_file"')
    if "dsn" in table:
        dsn = typed(ctx, table, "dsn", str, "cluster") or ""
    else:
        path = typed(ctx, table, "dsn_file", str, "cluster") or ""
        try:
            dsn = read_small_file(path).strip()
        except (OSError, ValueError) as e:
            raise ctx.error("cluster.dsn_file", f"cannot be read ({describe(e)})") from None
    if not dsn.startswith(("postgres://", "postgresql://")):
        raise ctx.error("cluster.dsn", "must be a postgresql:// URL")
    ctx.collect({"dsn": dsn}, "cluster")
    node = typed(ctx, table, "node", str, "cluster")
    node = socket.gethostname() if node is None else node
    if not node or len(node) > 200 or not node.isprintable():
        raise ctx.error("cluster.node", f"must be a printable name of at most 200 characters, got {show('', node)}")
    nums = numbers(table, ("lease", "heartbeat"))
    lease = nums.get("lease", 10.0)
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not 1 <= lease <= 3600:
        raise ctx.error("cluster.lease", f"must be a number of seconds 1..3600, got {show('', lease)}")
    heartbeat = nums.get("heartbeat", lease / 3)
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or not 0.05 <= heartbeat <= lease / 2:
        raise ctx.error(
            "cluster.heartbeat", f"must be 0.05..lease/2 seconds ({lease / 2:g}), got {show('', heartbeat)}"
        )
    schema = typed(ctx, table, "schema", str, "cluster") or "mcp_cluster"
    if not _SCHEMA.fullmatch(schema):
        raise ctx.error("cluster.schema", f"must be a lower-case SQL identifier, got {show('', schema)}")
    notify = typed(ctx, table, "notify", bool, "cluster") or False
    return ClusterConfig(dsn=dsn, node=node, lease=float(lease), heartbeat=float(heartbeat), schema=schema,
                         notify=notify)  # fmt: skip


def _daemon(ctx: Reader, table: Any) -> DaemonConfig:
    if table is None:
        return DaemonConfig()
    if not isinstance(table, dict):
        raise ctx.error("daemon", "must be a table")
    allowed = {"admin", "admin_token_file", "allow_remote_admin", "log_format", "log_level", "sockets", "exit_code",
               "alerts", "env_file", "mcp"}  # fmt: skip
    check_keys(ctx, table, allowed, "daemon")
    files = env_files(ctx, table.get("env_file"), "daemon.env_file")
    ctx.daemon_env = read_env_files(ctx, files, "daemon.env_file", ctx.env)
    for name, value in ctx.daemon_env.items():
        if is_secret_key(name):
            ctx.secret(f"daemon.env_file.{name}", value)
    allow_remote = bool(typed(ctx, table, "allow_remote_admin", bool, "daemon"))
    admin = _admin(ctx, typed(ctx, table, "admin", str, "daemon") or DEFAULT_ADMIN, allow_remote)
    log_format = typed(ctx, table, "log_format", str, "daemon") or "auto"
    if log_format not in ("auto", "json", "console"):
        raise ctx.error("daemon.log_format", f'must be "auto", "json" or "console", got {show("", log_format)}')
    log_level = (typed(ctx, table, "log_level", str, "daemon") or "info").lower()
    if log_level not in _LOG_LEVELS:
        raise ctx.error("daemon.log_level", f"must be one of {', '.join(_LOG_LEVELS)}, got {show('', log_level)}")
    exit_code = typed(ctx, table, "exit_code", str, "daemon") or "daemon"
    if exit_code not in ("daemon", "child"):
        raise ctx.error("daemon.exit_code", f'must be "daemon" or "child", got {show("", exit_code)}')
    token_file = typed(ctx, table, "admin_token_file", str, "daemon") or None
    if token_file is not None and ctx.host_checks:
        try:
            token = read_small_file(token_file).strip()
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ctx.error("daemon.admin_token_file", f"cannot read {token_file}: {reason}") from None
        if len(token) < MIN_TOKEN:
            raise ctx.error(
                "daemon.admin_token_file",
                f"the token in {token_file} must be at least {MIN_TOKEN} characters "
                f"(make one: python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > {token_file})",
            )
    return DaemonConfig(
        admin=admin,
        admin_token_file=token_file,
        allow_remote_admin=allow_remote,
        log_format=log_format,
        log_level=log_level,
        sockets=_sockets(ctx, table.get("sockets")),
        exit_code=exit_code,
        alerts=alerts(ctx, table.get("alerts")),
        mcp_allow=_mcp(ctx, table.get("mcp")),
    )


def _mcp(ctx: Reader, table: Any) -> tuple[str, ...]:
    """``[daemon.mcp]``: ``allow``, the mutating tools the MCP server offers (none by default)."""
    if table is None:
        return ()
    if not isinstance(table, dict):
        raise ctx.error("daemon.mcp", "must be a table ([daemon.mcp] with allow = [...])")
    check_keys(ctx, table, {"allow"}, "daemon.mcp")
    allow = table.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ctx.error("daemon.mcp.allow", f"must be an array of tool names, got {kind_of(allow)}")
    for a in allow:
        if a not in MCP_MUTATIONS:
            raise ctx.error("daemon.mcp.allow", f"unknown tool {a!r} (one of: {', '.join(MCP_MUTATIONS)})")
    return tuple(dict.fromkeys(allow))


def _admin(ctx: Reader, text: str, allow_remote: bool) -> Address:
    try:
        admin = Address.parse(text)
    except ValueError as e:
        raise ctx.error("daemon.admin", str(e)) from None
    if not admin.loopback and not allow_remote:
        raise ctx.error(
            "daemon.admin",
            f"{admin.host!r} is not a loopback address; the admin port must stay private unless "
            "daemon.allow_remote_admin = true (then put TLS and auth in front of it)",
        )
    return admin


def parse_config(
    text: str,
    file: str = "<config>",
    *,
    env: Mapping[str, str] | None = None,
    factories: Mapping[str, WorkerFactory] | None = None,
    workers: Mapping[str, str] | None = None,
    host_checks: bool = False,
) -> Config:
    """Validate ``text`` and build the config; every failure, foreseen or not, is a :class:`ConfigError`.

    ``host_checks``: also what only this machine can tell — each OS child's program exists and is executable, its
    user and group exist (the daemon's loads: ``run``, ``check-config``, reloads).

    ``workers``: names a ``worker =`` key may use, each an importable ``"package.module:factory"`` (the daemon passes
    its built-ins); ``factories``: names bound to factories directly. Any other name must itself be
    ``"package.module:factory"``.
    """
    try:
        reader = Reader(file, text, os.environ if env is None else env, workers or {}, factories or {})
        reader.host_checks = host_checks
        return _parse(reader)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(file, "", f"tables or arrays nest too deeply (at most {MAX_NESTING} levels)") from None
    except Exception as e:  # noqa: BLE001 - the guard: an unforeseen failure is still a config error, not a crash
        raise ConfigError(file, "", f"cannot be loaded ({describe(e)})") from None


def _parse(ctx: Reader) -> Config:
    file, text = ctx.file, ctx.text
    deep = too_deep(text, MAX_NESTING)
    if deep is not None:
        raise ConfigError(file, "", f"tables or arrays nest deeper than {MAX_NESTING} levels", deep)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(file, "", f"not valid TOML: {e}", int(m.group(1)) if m else None) from None
    check_keys(ctx, raw, {"daemon", "tree", "cluster", "include"}, "")
    data = ctx.expand(raw, "")
    daemon = _daemon(ctx, data.get("daemon"))
    ctx.cluster = _cluster(ctx, data.get("cluster"))
    ctx.sockets = {s.name for s in daemon.sockets}
    tree = data.get("tree")
    if not isinstance(tree, dict):
        raise ctx.error("tree", "missing: the root supervisor ([tree] with strategy, intensity, period, children)")
    check_keys(ctx, tree, SUP_FLAGS | {"id", "children"}, "tree")
    children = tree.get("children", [])
    if not isinstance(children, list):
        raise ctx.error("tree.children", "must be an array of tables ([[tree.children]])")
    entries: dict[str, ChildEntry] = {}
    included = read_includes(ctx, data.get("include"))
    attach(ctx, included)
    kids = [s for i, c in enumerate(children) for s in child(ctx, c, f"tree.children[{i}]", "", entries)]
    kids += included_children(ctx, "", kids, entries, 0)
    check_parents(ctx)
    flags = flags_of(ctx, tree, "tree")
    root_id = tree.get("id", "root")
    try:
        spec = SupervisorSpec(id=root_id, children=kids, flags=flags)
    except SpecError as e:
        raise ctx.error(f"tree.{e.field}", e.reason) from None
    entries[""] = ChildEntry(path="", kind="supervisor", fingerprint=str(root_id), flags=flags)
    return Config(
        file=file,
        daemon=daemon,
        tree=spec,
        entries=entries,
        replicas=dict(ctx.replicas),
        cluster=ctx.cluster,
        singletons=dict(ctx.singletons),
        isolated=dict(ctx.isolated),
        secrets=frozenset(ctx.secrets),
        warnings=tuple(ctx.warnings),
        includes=tuple(i.reader.file for i in included),
    )


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    factories: Mapping[str, WorkerFactory] | None = None,
    workers: Mapping[str, str] | None = None,
    host_checks: bool = False,
) -> Config:
    """Read and validate the config at ``path`` (see :func:`parse_config` for the others).

    Default path: ``$MCP_SUPERVISOR_CONFIG``, then ``config/supervision.toml``. Every failure is a ConfigError.
    """
    environ = os.environ if env is None else env
    chosen = Path(path or environ.get("MCP_SUPERVISOR_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = read_small_file(str(chosen), MAX_FILE)
    except (OSError, ValueError) as e:  # missing, unreadable, not a regular file, too large, not UTF-8, NUL in path
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(str(chosen)[:200], "", f"cannot read the config file: {reason}") from None
    return parse_config(text, str(chosen), env=environ, factories=factories, workers=workers, host_checks=host_checks)
