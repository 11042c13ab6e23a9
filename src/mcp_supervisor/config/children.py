"""The tree's tables: supervisors, in-process workers, OS processes — each checked and built into a core spec."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import sys
from collections.abc import Mapping
from fnmatch import fnmatchcase
from functools import partial
from typing import Any, NamedTuple

from ..core import (
    Backoff,
    ChildSpec,
    ProcessSpec,
    ReadyOutput,
    SpecError,
    SupervisorFlags,
    SupervisorSpec,
    WorkerSpec,
    describe,
)
from ..core.specs import shutdown_timeout
from .envfile import env_files, read_env_files
from .model import LOG_BYTES, LOG_LINES, ChildEntry, Singleton, WorkerFactory
from .processes import PROCESS_KEYS, os_options, process_specs
from .reader import Reader, check_keys, numbers
from .settings import SettingError, is_secret_key, kind_of, show

MAX_DEPTH = 64  # supervisors nested in one another

_NOT_RESTARTING = {"public_env", "instances", "reload", "start_retries", "reload_signal"}
"""An OS child's keys whose change restarts nothing (they apply to the next start, or to the supervisor only)."""
_COMMON = {"id", "restart", "shutdown", "significant", "backoff", "start_retries", "singleton", "prefer", "nodes"}
SUP_FLAGS = {"strategy", "intensity", "period", "auto_shutdown"}
_LOGS = {"log_lines", "log_bytes"}  # the output ring's bounds: changing them restarts nothing
_WORKER = _COMMON | _LOGS | {"worker", "config", "start_timeout"}
_PROCESS = _COMMON | _LOGS | PROCESS_KEYS
_ISOLATED_OS = {"limits", "max_memory", "memory_check", "user", "group", "umask"}
"""What an isolated supervisor's process takes of an OS process's keys (its process, its limits)."""
_SUPERVISOR = _COMMON | SUP_FLAGS | {"children", "isolation"} | _ISOLATED_OS
ISOLATED_EXITS = {3: ("shutdown", "reached_max_restart_intensity"), 4: ("shutdown", "auto_shutdown"),
                  5: ("shutdown", "")}  # fmt: skip
"""The exit codes of an isolated subtree's process whose supervisor ended as an in-process one does (OTP's
``shutdown``: a transient one is not restarted for it); any other code but 0 is abnormal."""
ISOLATED_READY = "mcp-supervisor isolated subtree: ready"
"""The line an isolated subtree's process prints once its tree has started (its readiness)."""


def flags_of(ctx: Reader, table: Mapping[str, Any], key: str) -> SupervisorFlags:
    table = numbers(table, ("intensity", "period"))
    kwargs = {k: table[k] for k in SUP_FLAGS if k in table}
    try:
        return SupervisorFlags(**kwargs)
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}" if key else e.field, e.reason) from None


def _backoff(ctx: Reader, value: Any, key: str) -> Backoff | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ctx.error(f"{key}.backoff", f"must be a table like {{ initial = 0.5, max = 30 }}, got {kind_of(value)}")
    check_keys(ctx, value, {"initial", "max", "multiplier", "jitter", "reset_after"}, f"{key}.backoff")
    try:
        return Backoff(**numbers(value, ("initial", "max", "multiplier", "jitter", "reset_after")))
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}", e.reason) from None


_EXTRA_OF = {"asyncpg": "postgres", "redis": "redis", "aiobotocore": "s3", "botocore": "s3"}
"""The client library each built-in service worker needs, and the extra that installs it."""


def _load_factory(ctx: Reader, name: str, key: str) -> WorkerFactory:
    target = ctx.workers.get(name, name)
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        known = ", ".join(sorted(ctx.workers)) or "none registered"
        hint = f'use a built-in ({known}) or "package.module:factory"'
        raise ctx.error(f"{key}.worker", f"unknown worker {show('', name)}: {hint}")
    if os.getcwd() not in sys.path:  # like `python -m`: modules next to where the daemon runs (examples/, ...)
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        extra = _EXTRA_OF.get((e.name or "").partition(".")[0])
        if extra is None or not mod_name.startswith("mcp_supervisor."):
            raise ctx.error(f"{key}.worker", f"cannot import {mod_name!r}: {type(e).__name__}: {e}") from None
        raise ctx.error(
            f"{key}.worker",
            f"worker {name!r} needs {e.name}, which is not installed: pip install 'mcp-supervisor-otp[{extra}]'",
        ) from None
    except Exception as e:  # noqa: BLE001 - any import failure is a config error naming the module
        raise ctx.error(f"{key}.worker", f"cannot import {mod_name!r}: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ctx.error(f"{key}.worker", f"{mod_name!r} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def child(  # noqa: C901, PLR0912, PLR0915 - one child table: each key is checked where it is read, in file order
    ctx: Reader, table: Any, key: str, parent: str, entries: dict[str, ChildEntry], *, depth: int = 1
) -> list[ChildSpec]:
    """One ``[[...children]]`` table (and, for a supervisor, everything below it) as core specs: one, or for an
    OS process with ``instances``, one per instance."""
    if not isinstance(table, dict):
        raise ctx.error(key, f"must be a table, got {kind_of(table)}")
    if depth > MAX_DEPTH:
        raise ctx.error(key, f"supervisors nest deeper than {MAX_DEPTH} levels")
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
    singleton = _singleton(ctx, table, key)
    table = numbers(table, ("shutdown", "start_timeout"))
    table = numbers(table, ("start_retries",))
    common: dict[str, Any] = {
        k: table[k] for k in ("id", "restart", "shutdown", "significant", "start_retries") if k in table
    }
    common["backoff"] = _backoff(ctx, table.get("backoff"), key)
    try:
        lines, size = _log_bounds(ctx, table, key)
        if kind == "worker":
            spec: ChildSpec = _worker(ctx, table, key, path, common, entries)
            entries[path] = dataclasses.replace(entries[path], log_lines=lines, log_bytes=size)
        elif kind == "command":
            public = _public_env(ctx, table.get("public_env", []), f"{key}.public_env")
            table, from_files = _with_env_files(ctx, table, key)
            public |= {n for n in from_files if not is_secret_key(n)}  # a file's values: secret by their names
            fingerprint = _fingerprint(table, _NOT_RESTARTING | _LOGS)  # with the files' values: a change restarts

            def entry(p: str) -> ChildEntry:
                return ChildEntry(path=p, kind="process", fingerprint=fingerprint, log_lines=lines, log_bytes=size)

            specs, made, replicas = process_specs(
                ctx, table, key, path, common, entry, partial(_env, ctx), partial(_command, ctx), ctx.sockets
            )
            for s in specs:
                for n, v in s.env.items():  # secret unless listed public (or it cannot be one: a port, a path)
                    if n not in public:
                        ctx.secret(f"{key}.env.{n}", v, named=False)
            entries.update(made)
            if replicas is not None:
                if singleton is not None:
                    raise ctx.error(f"{key}.singleton", "a child with instances cannot be a singleton")
                ctx.replicas[path] = replicas
            if singleton is not None:
                return _maybe_singleton(ctx, key, path, specs[0], singleton, entries[path].fingerprint)
            return list(specs)
        else:
            children = table["children"]
            if not isinstance(children, list):
                raise ctx.error(f"{key}.children", "must be an array of tables ([[...children]])")
            kids = [
                s
                for i, c in enumerate(children)
                for s in child(ctx, c, f"{key}.children[{i}]", path, entries, depth=depth + 1)
            ]
            kids += included_children(ctx, path, kids, entries, depth)
            flags = flags_of(ctx, table, key)
            spec = SupervisorSpec(children=kids, flags=flags, **common)
            own = _fingerprint(table, {"children", "start_retries"} | SUP_FLAGS)
            entries[path] = ChildEntry(path=path, kind="supervisor", fingerprint=own, flags=flags)
            if _isolation(ctx, table, key, singleton is not None) == "process":
                spec = _isolate(ctx, table, key, path, spec, entries)
            elif extra := sorted(_ISOLATED_OS & set(table)):
                raise ctx.error(f"{key}.{extra[0]}", 'applies only to an isolated supervisor (isolation = "process")')
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}", e.reason) from None
    if singleton is not None:
        return _maybe_singleton(ctx, key, path, spec, singleton, entries[path].fingerprint)
    return [spec]


def _isolation(ctx: Reader, table: Mapping[str, Any], key: str, singleton: bool) -> str:
    value = table.get("isolation", "none")
    if value not in ("none", "process"):
        raise ctx.error(f"{key}.isolation", f'must be "none" or "process", got {show("", value)}')
    if value == "process" and singleton:
        raise ctx.error(f"{key}.isolation", "a singleton supervisor cannot be isolated (yet): isolate its children")
    return str(value)


def _isolate(  # noqa: PLR0917
    ctx: Reader, table: Mapping[str, Any], key: str, path: str, spec: SupervisorSpec, entries: dict[str, ChildEntry]
) -> ProcessSpec:
    """``isolation = "process"``: the subtree runs in a Python process of its own (``mcp_supervisor.daemon.isolated``,
    which loads this same file and runs ``spec`` as its tree), supervised here as one OS child: ready when its tree
    has started, stopped with SIGTERM then SIGKILL after ``shutdown``. A change of its own keys restarts it; a
    change of its children (or its strategy and intensity) is applied by difference inside it (``Config.subtree``:
    its children's entries stay here, under their paths)."""
    ctx.isolated[path] = spec
    fingerprint = _fingerprint(table, {"children"} | SUP_FLAGS)
    entries[path] = ChildEntry(path=path, kind="process", fingerprint=fingerprint, flags=spec.flags)
    # an isolated subtree is killable: "infinity" (a supervisor's default) becomes 30 s, then SIGKILL
    budget = shutdown_timeout(spec.shutdown)
    shutdown = 30.0 if budget is None else budget
    own = numbers({k: table[k] for k in _ISOLATED_OS if k in table}, ("max_memory", "memory_check", "umask"))
    options = os_options(ctx, own, key, None, None)  # its process's limits, memory, user
    return ProcessSpec(
        id=spec.id, restart=spec.restart, significant=spec.significant, backoff=spec.backoff,
        shutdown=shutdown, start_retries=spec.start_retries,
        command=[sys.executable, "-m", "mcp_supervisor.daemon.isolated", os.path.abspath(ctx.file), path],
        ready=ReadyOutput(pattern=re.escape(ISOLATED_READY), timeout=60.0), control=True,
        template="mcp_supervisor.daemon.isolated", exit_reasons=ISOLATED_EXITS, **options,
    )  # fmt: skip


class Placement(NamedTuple):
    """Where a singleton may run: ``nodes`` (names or glob patterns; empty: anywhere) and, among them, ``prefer``."""

    prefer: tuple[str, ...]
    nodes: tuple[str, ...]


def _names(ctx: Reader, table: Mapping[str, Any], key: str, field: str, what: str) -> tuple[str, ...]:
    value = table.get(field, [])
    if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
        raise ctx.error(f"{key}.{field}", f"must be an array of {what}, got {kind_of(value)}")
    return tuple(value)


def _singleton(ctx: Reader, table: Mapping[str, Any], key: str) -> Placement | None:
    """``singleton = true`` (and its ``prefer`` and ``nodes``), or None for an ordinary child."""
    flag = table.get("singleton", False)
    if not isinstance(flag, bool):
        raise ctx.error(f"{key}.singleton", f"must be true or false, got {kind_of(flag)}")
    for field in ("prefer", "nodes"):
        if field in table and not flag:
            raise ctx.error(f"{key}.{field}", "applies only to a singleton")
    prefer = _names(ctx, table, key, "prefer", "node names")
    nodes = _names(ctx, table, key, "nodes", 'node names or patterns (e.g. ["a", "web-*"])')
    if "nodes" in table and not nodes:
        raise ctx.error(f"{key}.nodes", "names no node: leave it out to let every node hold it")
    if not flag:
        return None
    if ctx.cluster is None:
        raise ctx.error(f"{key}.singleton", "needs a [cluster] table (the fleet it runs once in)")
    for name in prefer:
        if nodes and not any(fnmatchcase(name, pattern) for pattern in nodes):
            raise ctx.error(f"{key}.prefer", f"names {name!r}, which nodes = {list(nodes)} does not allow")
    return Placement(prefer, nodes)


def _maybe_singleton(  # noqa: PLR0917
    ctx: Reader, key: str, path: str, spec: ChildSpec, placement: Placement, fingerprint: str
) -> list[ChildSpec]:
    """A singleton is kept out of its supervisor's children until the node holds its lease."""
    budget = spec.shutdown_timeout
    lease, heartbeat = ctx.cluster.lease, ctx.cluster.heartbeat
    if budget is None or budget + heartbeat + stop_margin(lease) >= lease:
        raise ctx.error(
            f"{key}.shutdown",
            f"a singleton must stop well within its lease: shutdown + heartbeat ({heartbeat:g}s) + margin "
            f"({stop_margin(lease):g}s) must be below cluster.lease ({lease:g}s)",
        )
    ctx.singletons[path] = Singleton(
        path=path, spec=spec, prefer=placement.prefer, nodes=placement.nodes, fingerprint=fingerprint
    )
    return []


def failover_bound(lease: float, heartbeat: float) -> float:
    """Seconds a singleton may go without a holder in a failover (the lease expires, a heartbeat notices, the next
    writes its row, a view reads it) before that is an alarm."""
    return lease + 3 * heartbeat


def move_bound(lease: float) -> float:
    """Seconds an operator's move (``ctl cluster move``) stays pending before it is void."""
    return 5 * lease


def stop_margin(lease: float) -> float:
    """Seconds kept between a singleton's stop and its lease's earliest expiry (the clocks' rates may differ)."""
    return max(0.5, lease * 0.1)


def _worker(  # noqa: PLR0917
    ctx: Reader, table: dict[str, Any], key: str, path: str, common: dict[str, Any], entries: dict[str, ChildEntry]
) -> WorkerSpec:
    name = table["worker"]
    if not isinstance(name, str) or not name:
        raise ctx.error(f"{key}.worker", f"must be a non-empty string, got {kind_of(name)}")
    settings = table.get("config", {})
    if not isinstance(settings, dict):
        raise ctx.error(f"{key}.config", f"must be a table, got {kind_of(settings)}")
    factory = ctx.factories.get(name) or _load_factory(ctx, name, key)
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
        path=path,
        kind="worker",
        fingerprint=_fingerprint(table, {"start_retries", *_LOGS}),
        worker=name,
        settings=settings,
    )
    return WorkerSpec(run=run, **common, **extra)


def _log_bounds(ctx: Reader, table: Mapping[str, Any], key: str) -> tuple[int, int]:
    """``log_lines`` (0..1,000,000) and ``log_bytes`` (0..64 MiB) of the child's output ring."""
    table = numbers(table, tuple(_LOGS))
    out = []
    for name, default, top in (("log_lines", LOG_LINES, 1_000_000), ("log_bytes", LOG_BYTES, 64 * 2**20)):
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ctx.error(f"{key}.{name}", f"must be an integer 0..{top}, got {show(name, value)}")
        out.append(value)
    return out[0], out[1]


def _with_env_files(ctx: Reader, table: dict[str, Any], key: str) -> tuple[dict[str, Any], set[str]]:
    """The table with the daemon's and its own ``env_file`` variables under its ``env`` (which wins), and the names
    that came from files only."""
    own = read_env_files(ctx, env_files(ctx, table.get("env_file"), f"{key}.env_file"), f"{key}.env_file", ctx.env)
    from_files = {**ctx.daemon_env, **own}
    table = {k: v for k, v in table.items() if k != "env_file"}
    if from_files:
        env = table.get("env", {})
        if isinstance(env, dict):
            table["env"] = {**from_files, **env}
            return table, set(from_files) - set(env)
    return table, set()


def included_children(
    ctx: Reader, path: str, siblings: list[ChildSpec], entries: dict[str, ChildEntry], depth: int
) -> list[ChildSpec]:
    """The children included files add to the supervisor at ``path``, after its own, each file's in order."""
    ctx.included_used.add(path)
    out: list[ChildSpec] = []
    taken = {s.id.split("#")[0] for s in siblings}
    for inc in ctx.included.get(path, []):
        for i, table in enumerate(inc.children):
            key = f"children[{i}]"
            cid = table.get("id") if isinstance(table, dict) else None
            if cid in taken or any(s.id.split("#")[0] == cid for s in out):
                where = "the root" if not path else repr(path)
                raise inc.reader.error(f"{key}.id", f"{cid!r} is already a child of {where}")
            out += child(inc.reader, table, key, path, entries, depth=depth + 1)
    return out


def _command(ctx: Reader, value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ctx.error(key, f"must be a non-empty array of strings (program, then arguments), got {kind_of(value)}")
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise ctx.error(f"{key}[{i}]", f"must be a string, got {kind_of(arg)}")
    return value


def _env(ctx: Reader, value: Any, key: str) -> dict[str, str]:
    """A child's environment: its values are never quoted in a message (they often hold secrets)."""
    if not isinstance(value, dict):
        raise ctx.error(key, f'must be a table like {{ NAME = "value" }}, got {kind_of(value)}')
    for name, v in value.items():
        if not name or "=" in name or "\x00" in name:
            raise ctx.error(key, f"{show('', name)} is not a valid variable name (empty, or contains '=' or NUL)")
        if not isinstance(v, str):
            raise ctx.error(f"{key}.{name}", f"must be a string, got {kind_of(v)}")
    return value


def _public_env(ctx: Reader, value: Any, key: str) -> set[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.error(key, f'must be an array of variable names (e.g. ["PORT", "LOG_LEVEL"]), got {kind_of(value)}')
    return set(value)


def _fingerprint(table: Mapping[str, Any], drop: set[str]) -> str:
    return json.dumps({k: v for k, v in table.items() if k not in drop}, sort_keys=True, default=str)
