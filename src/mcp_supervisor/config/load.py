"""Loading ``supervision.toml``: expand ``${VAR}``, validate every key, build the core's specs."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from ..core import (
    Backoff,
    ChildSpec,
    ProcessSpec,
    ReadyCommand,
    ReadyTCP,
    SpecError,
    SupervisorFlags,
    SupervisorSpec,
    WorkerSpec,
    describe,
)
from ..core.specs import WorkerFn
from ..redact import MIN_SECRET
from ..settings import SettingError, is_secret_key, kind_of, read_small_file, show
from .locate import locate, too_deep

DEFAULT_CONFIG_PATH = "config/supervision.toml"
DEFAULT_ADMIN = "127.0.0.1:7080"

WorkerFactory: TypeAlias = Callable[[Mapping[str, Any]], WorkerFn]
"""A worker plugin: called once per load with the child's ``config`` table; returns the worker's ``run(ctx)``.
It validates its settings and raises ``ValueError`` (naming the setting) for bad ones."""


def builtin_workers() -> dict[str, str]:
    """Built-in worker names and the factories they load."""
    return {
        "postgres": "mcp_supervisor.services.postgres:factory",
        "redis": "mcp_supervisor.services.redis:factory",
        "s3": "mcp_supervisor.services.s3:factory",
        "vault": "mcp_supervisor.services.vault:factory",
        "health": "mcp_supervisor.health.monitor:factory",
        "telemetry": "mcp_supervisor.telemetry.sink:factory",
    }


class ConfigError(Exception):
    """An invalid config file. The message names the file, the line when found, and the key path."""

    def __init__(self, file: str, key: str, message: str, line: int | None = None) -> None:
        self.file = file
        self.key = key
        self.line = line
        message = _one_line(message)
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def _one_line(text: str) -> str:
    """A message is one log line: control characters (a factory's own text may hold some) are escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    admin: str = DEFAULT_ADMIN
    admin_token_file: str | None = None
    allow_remote_admin: bool = False
    log_format: str = "auto"
    log_level: str = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildEntry:
    """One node of the configured tree with the fingerprint reload compares (spec, command or config changed)."""

    path: str
    kind: str
    fingerprint: str
    flags: SupervisorFlags | None = None
    worker: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # a worker's expanded config table


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    file: str
    daemon: DaemonConfig
    tree: SupervisorSpec
    entries: Mapping[str, ChildEntry] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()
    """Values the config marks or names as secret: what the daemon redacts from everything it writes."""
    warnings: tuple[str, ...] = ()


_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?\d+\.\d+")
MAX_NESTING = 64  # brackets and braces in the file, and supervisors in the tree
MAX_FILE = 4 * 2**20  # bytes


class _Expanded(str):
    """A string that was exactly one ``${VAR}``: where the schema wants a number or a boolean, its text may
    spell one (``intensity = "${MAX_RESTARTS:-3}"``). Elsewhere it stays the string it is."""

    __slots__ = ()


def as_number(value: Any) -> Any:
    """``value``, or the number an expanded ``${VAR}`` spells (for settings that must be numbers)."""
    if isinstance(value, str) and (_INT.fullmatch(value) or _FLOAT.fullmatch(value)):
        return int(value) if _INT.fullmatch(value) else float(value)
    return value


def _numbers(table: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = dict(table)
    for k in keys:
        if isinstance(out.get(k), _Expanded):
            out[k] = as_number(out[k])
    return out


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


_USERINFO_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@")


class _Ctx:
    def __init__(self, file: str, text: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.text = text
        self.env = env
        self.secrets: set[str] = set()
        self.warnings: list[str] = []

    def secret(self, key: str, value: str) -> None:
        if not value:
            return
        if len(value) < MIN_SECRET:
            self.warnings.append(
                f"{key}: shorter than {MIN_SECRET} characters, so it cannot be redacted from logs; use a real secret"
            )
        self.secrets.add(value)

    def collect(self, table: Mapping[str, Any], key: str) -> None:
        """Secrets in a worker's settings: secret-named values, ``*_file`` secrets' contents, URL passwords."""
        for k, v in table.items():
            path = f"{key}.{k}"
            if isinstance(v, Mapping):
                self.collect(v, path)
                continue
            locator = k.lower().endswith(("url", "dsn"))  # only its password (below) is secret, not the address
            if isinstance(v, str | int) and not isinstance(v, bool) and is_secret_key(k) and not locator:
                self.secret(path, str(v))
            elif isinstance(v, str) and k.endswith("_file") and is_secret_key(k[:-5]):
                try:
                    self.secret(path, read_small_file(v).strip())
                except (OSError, ValueError):
                    pass  # the worker reports an unreadable file itself, when it reads it
            if isinstance(v, str):
                for m in _USERINFO_PASSWORD.finditer(v):
                    self.secret(path, m.group(1))

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.file, key, message, locate(self.text, key))

    def expand(self, value: Any, key: str) -> Any:
        if isinstance(value, str):
            return self.expand_text(value, key)
        if isinstance(value, list):
            return [self.expand(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.expand(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        return value

    def expand_text(self, text: str, key: str) -> str:
        """``${VAR}``, ``${VAR:-default}`` (also for an empty value) and ``$$``; anything else is an error."""
        if "$" not in text:
            return text
        out: list[str] = []
        i, n = 0, len(text)
        whole = False
        while i < n:
            j = text.find("$", i)
            if j < 0:
                out.append(text[i:])
                break
            out.append(text[i:j])
            nxt = text[j + 1 : j + 2]
            if nxt == "$":
                out.append("$")
                i = j + 2
                continue
            if nxt != "{":
                out.append("$")  # a lone "$" is itself
                i = j + 1
                continue
            end = text.find("}", j + 2)
            if end < 0:
                raise self.error(key, 'unterminated "${" (write "$$" for a literal "$")')
            body = text[j + 2 : end]
            name, sep, default = body.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                shown = body if len(body) <= 40 else body[:37] + "..."
                raise self.error(key, f'"${{{shown}}}" is not a variable reference (names are [A-Za-z_][A-Za-z0-9_]*)')
            got = self.env.get(name)
            if got is None or (got == "" and sep):
                if not sep:
                    raise self.error(key, f"environment variable {name} is not set (use ${{{name}:-default}})")
                got = default
            out.append(got)
            whole = j == 0 and end == n - 1
            i = end + 1
        result = "".join(out)
        return _Expanded(result) if whole else result


def _check_keys(ctx: _Ctx, table: Mapping[str, Any], allowed: set[str], key: str) -> None:
    for k in table:
        if k not in allowed:
            raise ctx.error(f"{key}.{k}" if key else k, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _typed(ctx: _Ctx, table: Mapping[str, Any], name: str, types: type | tuple[type, ...], key: str) -> Any:
    value = table.get(name)
    if value is None:
        return None
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types))
    if not ok:
        want = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in _as_tuple(types))
        raise ctx.error(f"{key}.{name}", f"must be {want}, got {show(name, value)}")
    return value


_TYPE_WORDS = {str: "a string", bool: "true or false", int: "an integer", float: "a number", list: "an array",
               dict: "a table"}  # fmt: skip


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _daemon(ctx: _Ctx, table: Any) -> DaemonConfig:
    if table is None:
        return DaemonConfig()
    if not isinstance(table, dict):
        raise ctx.error("daemon", "must be a table")
    _check_keys(ctx, table, {"admin", "admin_token_file", "allow_remote_admin", "log_format", "log_level"}, "daemon")
    admin = _typed(ctx, table, "admin", str, "daemon") or DEFAULT_ADMIN
    allow_remote = bool(_typed(ctx, table, "allow_remote_admin", bool, "daemon"))
    _check_admin(ctx, admin, allow_remote)
    log_format = _typed(ctx, table, "log_format", str, "daemon") or "auto"
    if log_format not in ("auto", "json", "console"):
        raise ctx.error("daemon.log_format", f'must be "auto", "json" or "console", got {show("", log_format)}')
    log_level = (_typed(ctx, table, "log_level", str, "daemon") or "info").lower()
    if log_level not in _LOG_LEVELS:
        raise ctx.error("daemon.log_level", f"must be one of {', '.join(_LOG_LEVELS)}, got {show('', log_level)}")
    token_file = _typed(ctx, table, "admin_token_file", str, "daemon") or None
    return DaemonConfig(
        admin=admin,
        admin_token_file=token_file,
        allow_remote_admin=allow_remote,
        log_format=log_format,
        log_level=log_level,
    )


def split_host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError says what is wrong."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f'must be "host:port" or "unix:/path", got {show("address", value)}')
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5 or not 0 < int(port_s) < 65536:
        raise ValueError(f"port must be 1..65535, got {show('port', port_s)}")
    return host, int(port_s)


def _check_admin(ctx: _Ctx, admin: str, allow_remote: bool) -> None:
    if admin.startswith("unix:"):
        if not admin[5:].startswith("/"):
            raise ctx.error("daemon.admin", f"a unix socket needs an absolute path, got {show('admin', admin)}")
        if len(admin[5:].encode()) > 107 or "\x00" in admin:
            raise ctx.error("daemon.admin", "a unix socket path must be at most 107 bytes, without NUL")
        return
    try:
        host, _ = split_host_port(admin)
    except ValueError as e:
        raise ctx.error("daemon.admin", str(e)) from None
    if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127.") and not allow_remote:
        raise ctx.error(
            "daemon.admin",
            f"{host!r} is not a loopback address; the admin port must stay private unless "
            "daemon.allow_remote_admin = true (then put TLS and auth in front of it)",
        )


_COMMON = {"id", "restart", "shutdown", "significant", "backoff"}
_SUP_FLAGS = {"strategy", "intensity", "period", "auto_shutdown"}
_WORKER = _COMMON | {"worker", "config", "start_timeout"}
_PROCESS = _COMMON | {"command", "env", "public_env", "cwd", "inherit_env", "ready"}
_SUPERVISOR = _COMMON | _SUP_FLAGS | {"children"}


def _flags(ctx: _Ctx, table: Mapping[str, Any], key: str) -> SupervisorFlags:
    table = _numbers(table, ("intensity", "period"))
    kwargs = {k: table[k] for k in _SUP_FLAGS if k in table}
    try:
        return SupervisorFlags(**kwargs)
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}" if key else e.field, e.reason) from None


def _backoff(ctx: _Ctx, value: Any, key: str) -> Backoff | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ctx.error(f"{key}.backoff", f"must be a table like {{ initial = 0.5, max = 30 }}, got {kind_of(value)}")
    _check_keys(ctx, value, {"initial", "max", "multiplier", "jitter", "reset_after"}, f"{key}.backoff")
    try:
        return Backoff(**_numbers(value, ("initial", "max", "multiplier", "jitter", "reset_after")))
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}", e.reason) from None


def _ready(ctx: _Ctx, value: Any, key: str) -> ReadyTCP | ReadyCommand | None:
    if value is None:
        return None
    k = f"{key}.ready"
    if not isinstance(value, dict):
        raise ctx.error(k, f'must be a table: {{ tcp = "host:port" }} or {{ command = [...] }}, got {kind_of(value)}')
    _check_keys(ctx, value, {"tcp", "command", "timeout", "interval"}, k)
    value = _numbers(value, ("timeout", "interval"))
    if ("tcp" in value) == ("command" in value):
        raise ctx.error(k, 'needs exactly one of "tcp" or "command"')
    try:
        if "tcp" in value:
            if "interval" in value:
                raise ctx.error(f"{k}.interval", "applies only to command readiness")
            if not isinstance(value["tcp"], str):
                raise ctx.error(f"{k}.tcp", f'must be "host:port", got {kind_of(value["tcp"])}')
            try:
                host, port = split_host_port(value["tcp"])
            except ValueError as e:
                raise ctx.error(f"{k}.tcp", str(e)) from None
            return ReadyTCP(host=host, port=port, **({"timeout": value["timeout"]} if "timeout" in value else {}))
        extra = {n: value[n] for n in ("timeout", "interval") if n in value}
        return ReadyCommand(command=value["command"], **extra)
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}", e.reason) from None


def _load_factory(ctx: _Ctx, name: str, key: str) -> WorkerFactory:
    target = builtin_workers().get(name, name)
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        known = ", ".join(sorted(builtin_workers()))
        hint = f'use a built-in ({known}) or "package.module:factory"'
        raise ctx.error(f"{key}.worker", f"unknown worker {show('', name)}: {hint}")
    if os.getcwd() not in sys.path:  # like `python -m`: modules next to where the daemon runs (examples/, ...)
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is a config error naming the module
        raise ctx.error(f"{key}.worker", f"cannot import {mod_name!r}: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ctx.error(f"{key}.worker", f"{mod_name!r} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def _child(  # noqa: PLR0917
    ctx: _Ctx,
    table: Any,
    key: str,
    parent: str,
    entries: dict[str, ChildEntry],
    factories: dict[str, WorkerFactory],
    depth: int = 1,
) -> ChildSpec:
    if not isinstance(table, dict):
        raise ctx.error(key, f"must be a table, got {kind_of(table)}")
    if depth > MAX_NESTING:
        raise ctx.error(key, f"supervisors nest deeper than {MAX_NESTING} levels")
    cid = table.get("id")
    if not isinstance(cid, str) or not cid:
        raise ctx.error(f"{key}.id", f"must be a non-empty string, got {show('id', cid)}")
    kinds = [k for k in ("worker", "command", "children") if k in table]
    if len(kinds) != 1:
        what = " and ".join(kinds) if kinds else "none of them"
        raise ctx.error(
            key,
            f'needs exactly one of "worker" (in-process), "command" (OS process) or "children" '
            f"(supervisor); has {what}",
        )
    kind = kinds[0]
    allowed = {"worker": _WORKER, "command": _PROCESS, "children": _SUPERVISOR}[kind]
    for k in table:
        if k not in allowed:
            what = {"worker": "an in-process worker", "command": "an OS process", "children": "a supervisor"}[kind]
            raise ctx.error(f"{key}.{k}", f"not valid for {what} (allowed: {', '.join(sorted(allowed))})")
    path = f"{parent}/{cid}" if parent else cid
    table = _numbers(table, ("shutdown", "start_timeout"))
    common: dict[str, Any] = {k: table[k] for k in ("id", "restart", "shutdown", "significant") if k in table}
    common["backoff"] = _backoff(ctx, table.get("backoff"), key)
    try:
        if kind == "worker":
            spec: ChildSpec = _worker(ctx, table, key, path, common, entries, factories)
        elif kind == "command":
            env = _env(ctx, table.get("env", {}), f"{key}.env")
            public = _public_env(ctx, table.get("public_env", []), f"{key}.public_env")
            for name, value in env.items():
                if name not in public:
                    ctx.secrets.add(value)  # env values are secret unless listed as public
            spec = ProcessSpec(
                command=_command(ctx, table["command"], f"{key}.command"),
                env=env,
                cwd=table.get("cwd"),
                inherit_env=table.get("inherit_env", True),
                ready=_ready(ctx, table.get("ready"), key),
                **common,
            )
            entries[path] = ChildEntry(path=path, kind="process", fingerprint=_fingerprint(table, {"public_env"}))
        else:
            children = table["children"]
            if not isinstance(children, list):
                raise ctx.error(f"{key}.children", "must be an array of tables ([[...children]])")
            kids = [
                _child(ctx, c, f"{key}.children[{i}]", path, entries, factories, depth + 1)
                for i, c in enumerate(children)
            ]
            flags = _flags(ctx, table, key)
            spec = SupervisorSpec(children=kids, flags=flags, **common)
            own = _fingerprint(table, {"children"} | _SUP_FLAGS)
            entries[path] = ChildEntry(path=path, kind="supervisor", fingerprint=own, flags=flags)
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}", e.reason) from None
    return spec


def _worker(  # noqa: PLR0917
    ctx: _Ctx,
    table: dict[str, Any],
    key: str,
    path: str,
    common: dict[str, Any],
    entries: dict[str, ChildEntry],
    factories: dict[str, WorkerFactory],
) -> WorkerSpec:
    name = table["worker"]
    if not isinstance(name, str) or not name:
        raise ctx.error(f"{key}.worker", f"must be a non-empty string, got {kind_of(name)}")
    settings = table.get("config", {})
    if not isinstance(settings, dict):
        raise ctx.error(f"{key}.config", f"must be a table, got {kind_of(settings)}")
    factory = factories.get(name) or _load_factory(ctx, name, key)
    try:
        run = factory(settings)
    except SettingError as e:
        raise ctx.error(f"{key}.config.{e.key}" if e.key else f"{key}.config", e.message) from None
    except (ValueError, TypeError, KeyError) as e:  # a factory's own message, e.g. "every: must be > 0"
        raise ctx.error(f"{key}.config", str(e) or type(e).__name__) from None
    except Exception as e:  # noqa: BLE001 - any failure of a factory is a config error naming the child
        raise ctx.error(f"{key}.config", f"the {name!r} worker rejected its settings ({describe(e)})") from None
    if not callable(run):
        raise ctx.error(f"{key}.worker", f"the factory of {name!r} must return an async run(ctx) function")
    ctx.collect(settings, f"{key}.config")
    extra = {"start_timeout": table["start_timeout"]} if "start_timeout" in table else {}
    entries[path] = ChildEntry(
        path=path, kind="worker", fingerprint=_fingerprint(table, set()), worker=name, settings=settings
    )
    return WorkerSpec(run=run, **common, **extra)


def _command(ctx: _Ctx, value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ctx.error(key, f"must be a non-empty array of strings (program, then arguments), got {kind_of(value)}")
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise ctx.error(f"{key}[{i}]", f"must be a string, got {kind_of(arg)}")
    return value


def _env(ctx: _Ctx, value: Any, key: str) -> dict[str, str]:
    """A child's environment: its values are never quoted in a message (they often hold secrets)."""
    if not isinstance(value, dict):
        raise ctx.error(key, f'must be a table like {{ NAME = "value" }}, got {kind_of(value)}')
    for name, v in value.items():
        if not name or "=" in name or "\x00" in name:
            raise ctx.error(key, f"{show('', name)} is not a valid variable name (empty, or contains '=' or NUL)")
        if not isinstance(v, str):
            raise ctx.error(f"{key}.{name}", f"must be a string, got {kind_of(v)}")
    return value


def _public_env(ctx: _Ctx, value: Any, key: str) -> set[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.error(key, f'must be an array of variable names (e.g. ["PORT", "LOG_LEVEL"]), got {kind_of(value)}')
    return set(value)


def _fingerprint(table: Mapping[str, Any], drop: set[str]) -> str:
    return json.dumps({k: v for k, v in table.items() if k not in drop}, sort_keys=True, default=str)


def parse_config(
    text: str,
    file: str = "<config>",
    env: Mapping[str, str] | None = None,
    factories: Mapping[str, WorkerFactory] | None = None,
) -> Config:
    """Validate ``text`` and build the config; every failure, foreseen or not, is a :class:`ConfigError`."""
    try:
        return _parse(text, file, os.environ if env is None else env, factories or {})
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(file, "", f"tables or arrays nest too deeply (at most {MAX_NESTING} levels)") from None
    except Exception as e:  # noqa: BLE001 - the guard: an unforeseen failure is still a config error, not a crash
        raise ConfigError(file, "", f"cannot be loaded ({describe(e)})") from None


def _parse(text: str, file: str, env: Mapping[str, str], factories: Mapping[str, WorkerFactory]) -> Config:
    ctx = _Ctx(file, text, env)
    deep = too_deep(text, MAX_NESTING)
    if deep is not None:
        raise ConfigError(file, "", f"tables or arrays nest deeper than {MAX_NESTING} levels", deep)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(file, "", f"not valid TOML: {e}", int(m.group(1)) if m else None) from None
    _check_keys(ctx, raw, {"daemon", "tree"}, "")
    data = ctx.expand(raw, "")
    daemon = _daemon(ctx, data.get("daemon"))
    tree = data.get("tree")
    if not isinstance(tree, dict):
        raise ctx.error("tree", "missing: the root supervisor ([tree] with strategy, intensity, period, children)")
    _check_keys(ctx, tree, _SUP_FLAGS | {"id", "children"}, "tree")
    children = tree.get("children", [])
    if not isinstance(children, list):
        raise ctx.error("tree.children", "must be an array of tables ([[tree.children]])")
    entries: dict[str, ChildEntry] = {}
    facs = dict(factories)
    kids = [_child(ctx, c, f"tree.children[{i}]", "", entries, facs) for i, c in enumerate(children)]
    flags = _flags(ctx, tree, "tree")
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
        secrets=frozenset(ctx.secrets),
        warnings=tuple(ctx.warnings),
    )


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    factories: Mapping[str, WorkerFactory] | None = None,
) -> Config:
    """Read and validate the config at ``path``.

    Default: ``$MCP_SUPERVISOR_CONFIG``, then ``config/supervision.toml``. Every failure is a :class:`ConfigError`.
    """
    environ = os.environ if env is None else env
    chosen = Path(path or environ.get("MCP_SUPERVISOR_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = read_small_file(str(chosen), MAX_FILE)
    except (OSError, ValueError) as e:  # missing, unreadable, not a regular file, too large, not UTF-8, NUL in path
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(str(chosen)[:200], "", f"cannot read the config file: {reason}") from None
    return parse_config(text, str(chosen), environ, factories)
