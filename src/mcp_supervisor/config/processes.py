"""An OS-process child's table: command and environment, readiness and liveness, limits, user, held sockets, and
``instances`` (replicas ``id#0 … id#N-1``, ``{instance}`` expanded in command, env, cwd, ready and live)."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
from collections.abc import Callable, Mapping
from typing import Any

from ..core import Liveness, ProcessSpec, ReadyCommand, ReadyOutput, ReadyTCP, SpecError
from ..core.specs import RLIMITS
from .model import INSTANCE_SEP, MAX_INSTANCES, ChildEntry, ReplicaSet
from .reader import Reader, check_keys, numbers, split_host_port
from .settings import kind_of, show

PROCESS_KEYS = {"command", "env", "public_env", "cwd", "inherit_env", "ready", "live", "limits", "user", "group",
                "umask", "stop_signal", "reload_signal", "pidfile", "sockets", "max_memory", "memory_check",
                "instances", "reload", "env_file"}  # fmt: skip
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_SIZED_LIMITS = {"memory", "stack", "fsize", "memlock", "core"}
_EXPANDED = ("command", "env", "cwd", "ready", "live", "pidfile")


def size(ctx: Reader, value: Any, key: str) -> int:
    """Bytes: an integer, or a string like "512M", "1.5G", "64KiB" (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m:
            return int(float(m.group(1)) * 1024 ** "_KMGT".index((m.group(2) or "_").upper()))
    raise ctx.error(key, f'must be a size in bytes (an integer >= 0, or like "512M", "2G"), got {show("", value)}')


def _signal(ctx: Reader, value: Any, key: str) -> int:
    if isinstance(value, str):
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    elif isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65:
        return value
    raise ctx.error(key, f'must be a signal name like "SIGTERM", "INT" or "QUIT" (or 1..64), got {show("", value)}')


def _limits(ctx: Reader, value: Any, key: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ctx.error(key, f'must be a table like {{ nofile = 4096, memory = "512M" }}, got {kind_of(value)}')
    check_keys(ctx, value, set(RLIMITS), key)
    out = {}
    for name, v in value.items():
        if name in _SIZED_LIMITS:
            out[name] = size(ctx, v, f"{key}.{name}")
        elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ctx.error(f"{key}.{name}", f"must be an integer >= 0, got {show(name, v)}")
        else:
            out[name] = v
    return out


def ready(ctx: Reader, value: Any, key: str) -> ReadyTCP | ReadyCommand | ReadyOutput | None:
    if value is None:
        return None
    k = f"{key}.ready"
    if not isinstance(value, dict):
        raise ctx.error(k, f'must be a table: {{ tcp = "host:port" }}, {{ command = [...] }} or '
                           f'{{ output = "regex" }}, got {kind_of(value)}')  # fmt: skip
    check_keys(ctx, value, {"tcp", "command", "output", "timeout", "interval"}, k)
    value = numbers(value, ("timeout", "interval"))
    kinds = [n for n in ("tcp", "command", "output") if n in value]
    if len(kinds) != 1:
        raise ctx.error(k, 'needs exactly one of "tcp", "command" or "output"')
    if "interval" in value and "command" not in value:
        raise ctx.error(f"{k}.interval", "applies only to command readiness")
    timeout = {"timeout": value["timeout"]} if "timeout" in value else {}
    try:
        if "tcp" in value:
            host, port = _host_port(ctx, value["tcp"], f"{k}.tcp")
            return ReadyTCP(host=host, port=port, **timeout)
        if "output" in value:
            return ReadyOutput(pattern=value["output"], **timeout)
        extra = {n: value[n] for n in ("timeout", "interval") if n in value}
        return ReadyCommand(command=value["command"], **extra)
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}", e.reason) from None


def _host_port(ctx: Reader, value: Any, key: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ctx.error(key, f'must be "host:port", got {kind_of(value)}')
    try:
        return split_host_port(value)
    except ValueError as e:
        raise ctx.error(key, str(e)) from None


def _live(ctx: Reader, value: Any, key: str) -> Liveness | None:
    if value is None:
        return None
    k = f"{key}.live"
    if not isinstance(value, dict):
        raise ctx.error(k, f'must be a table like {{ http = "http://127.0.0.1:8080/healthz" }}, got {kind_of(value)}')
    check_keys(ctx, value, {"http", "tcp", "command", "every", "timeout", "failures"}, k)
    value = numbers(value, ("every", "timeout", "failures"))
    args = {n: value[n] for n in ("http", "command", "every", "timeout", "failures") if n in value}
    if "tcp" in value:
        args["tcp"] = _host_port(ctx, value["tcp"], f"{k}.tcp")
    try:
        return Liveness(**args)
    except SpecError as e:
        raise ctx.error(f"{key}.{e.field}", e.reason) from None
    except TypeError as e:
        raise ctx.error(k, str(e)) from None


def _expand(value: Any, instance: int) -> Any:
    if isinstance(value, str):
        return value.replace("{instance}", str(instance))
    if isinstance(value, list):
        return [_expand(v, instance) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, instance) for k, v in value.items()}
    return value


def _replication(ctx: Reader, table: dict[str, Any], key: str, child_id: str) -> tuple[int | None, str]:
    """``instances`` (None: not replicated) and the ``reload`` mode of a replicated child."""
    instances = table.get("instances")
    if instances is not None and (isinstance(instances, bool) or not isinstance(instances, int)
                                  or not 0 <= instances <= MAX_INSTANCES):  # fmt: skip
        raise ctx.error(f"{key}.instances", f"must be an integer 0..{MAX_INSTANCES}, got {show('', instances)}")
    mode = table.get("reload", "restart")
    if mode not in ("restart", "rolling"):
        raise ctx.error(f"{key}.reload", f'must be "restart" or "rolling", got {show("", mode)}')
    if "reload" in table and instances is None:
        raise ctx.error(f"{key}.reload", "applies only to a child with instances")
    if INSTANCE_SEP in child_id:
        raise ctx.error(
            f"{key}.id", f"must not contain {INSTANCE_SEP!r} (it names the instances of a replicated child)"
        )
    return instances, mode


def _held_sockets(ctx: Reader, names: Any, key: str, sockets: set[str] | None) -> list[str]:
    """``sockets``: names of ``[[daemon.sockets]]`` the child gets (None: the declared ones are not known here)."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ctx.error(f"{key}.sockets", f"must be an array of [[daemon.sockets]] names, got {kind_of(names)}")
    for i, n in enumerate(names):
        if sockets is not None and n not in sockets:
            known = ", ".join(sorted(sockets)) or "none declared"
            raise ctx.error(f"{key}.sockets[{i}]", f"{show('', n)} is not a [[daemon.sockets]] name ({known})")
    return names


def os_options(
    ctx: Reader, table: dict[str, Any], key: str, instances: int | None, sockets: set[str] | None
) -> dict[str, Any]:
    """The OS-process options of a table (signals, pidfile, limits, memory, user, umask, held sockets)."""
    options: dict[str, Any] = {}
    for name in ("stop_signal", "reload_signal"):
        if name in table:
            options[name] = _signal(ctx, table[name], f"{key}.{name}")
    if "pidfile" in table:
        pidfile = table["pidfile"]
        if not isinstance(pidfile, str) or not pidfile:
            raise ctx.error(f"{key}.pidfile", f"must be a path, got {show('', pidfile)}")
        if instances is not None and "{instance}" not in pidfile:
            raise ctx.error(f"{key}.pidfile", "with instances, each needs its own: put {instance} in it")
    if "limits" in table:
        options["limits"] = _limits(ctx, table["limits"], f"{key}.limits")
    if "max_memory" in table:
        options["max_memory"] = size(ctx, table["max_memory"], f"{key}.max_memory")
    for name in ("user", "group", "umask", "memory_check"):
        if name in table:
            options[name] = table[name]
    if isinstance(table.get("umask"), str):  # "027", as in a shell
        try:
            options["umask"] = int(table["umask"], 8)
        except ValueError:
            raise ctx.error(f"{key}.umask", f'must be octal like "027", got {show("", table["umask"])}') from None
    options["sockets"] = _held_sockets(ctx, table.get("sockets", []), key, sockets)
    return options


def process_specs(  # noqa: PLR0917
    ctx: Reader,
    table: dict[str, Any],
    key: str,
    path: str,
    common: dict[str, Any],
    entry: Callable[[str], ChildEntry],
    env_of: Callable[[Any, str], dict[str, str]],
    command_of: Callable[[Any, str], list[str]],
    sockets: set[str] | None,
) -> tuple[list[ProcessSpec], dict[str, ChildEntry], ReplicaSet | None]:
    """The spec(s) of one OS-process table: one child, or ``instances`` of them (``id#i``) and their set."""
    table = numbers(table, ("instances", "max_memory", "memory_check", "umask"))
    instances, mode = _replication(ctx, table, key, common["id"])
    options = os_options(ctx, table, key, instances, sockets)

    def build(t: Mapping[str, Any], cid: str) -> ProcessSpec:
        try:
            spec = ProcessSpec(
                command=command_of(t["command"], f"{key}.command"),
                env=env_of(t.get("env", {}), f"{key}.env"),
                cwd=t.get("cwd"),
                pidfile=t.get("pidfile"),
                inherit_env=t.get("inherit_env", True),
                ready=ready(ctx, t.get("ready"), key),
                live=_live(ctx, t.get("live"), key),
                **{**common, "id": cid},
                **options,
            )
        except SpecError as e:
            raise ctx.error(f"{key}.{e.field}", e.reason) from None
        return runnable(ctx, key, spec) if ctx.host_checks else spec

    if instances is None:
        return [build(table, common["id"])], {path: entry(path)}, None

    def make(i: int) -> ProcessSpec:
        return build({**table, **{k: _expand(table[k], i) for k in _EXPANDED if k in table}}, f"{common['id']}#{i}")

    specs = [make(i) for i in range(instances)]
    if instances == 0:
        make(0)  # still checked, so that a later scale cannot fail on the file's settings
    ids = [f"{path}{INSTANCE_SEP}{i}" for i in range(instances)]
    replicas = ReplicaSet(path=path, instances=instances, rolling=mode == "rolling", make=make)
    return specs, {p: entry(p) for p in ids}, replicas


def runnable(ctx: Reader, key: str, spec: ProcessSpec) -> ProcessSpec:
    """What the start would find wrong on this machine, found when the daemon loads the file (``run``,
    ``check-config``, a reload): a program that is not there or not executable (looked up as the
    launch chain looks it up: on the child's PATH, relative to its cwd), a user or group that does not exist."""
    program = spec.command[0]
    cwd = spec.cwd or os.getcwd()
    if "/" in program:
        found: str | None = os.path.join(cwd, program)
        where = f"(relative to {cwd})" if not os.path.isabs(program) else ""
    else:
        path = spec.env.get("PATH") or (os.environ.get("PATH", os.defpath) if spec.inherit_env else os.defpath)
        found = shutil.which(program, path=path)
        where = f"on the child's PATH ({path[:200]})"
    if found is None or not os.path.isfile(found):
        raise ctx.error(f"{key}.command[0]", f"program {show('', program)} not found {where}".rstrip())
    if not os.access(found, os.X_OK):
        raise ctx.error(f"{key}.command[0]", f"{found} is not executable (chmod +x, or run it with its interpreter)")
    for field, lookup in (("user", pwd.getpwnam), ("group", grp.getgrnam)):
        name = getattr(spec, field)
        if isinstance(name, str) and not name.isdigit():
            try:
                lookup(name)
            except KeyError:
                raise ctx.error(f"{key}.{field}", f"no {field} named {show('', name)} on this machine") from None
    return spec
