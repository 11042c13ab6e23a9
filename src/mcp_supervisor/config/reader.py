"""Reading a TOML table as the config needs it: ``${VAR}`` expansion, located errors, secrets noted on the way."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..core import Address
from .locate import locate
from .model import ConfigError, WorkerFactory
from .redact import MIN_SECRET, could_be_secret
from .settings import is_secret_key, read_small_file, show

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


def numbers(table: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = dict(table)
    for k in keys:
        if isinstance(out.get(k), _Expanded):
            out[k] = as_number(out[k])
    return out


_USERINFO_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@")


class Reader:
    """One file being read: where errors point, the environment ``${VAR}`` reads, the workers it may name."""

    def __init__(
        self,
        file: str,
        text: str,
        env: Mapping[str, str],
        workers: Mapping[str, str],
        factories: Mapping[str, WorkerFactory],
    ) -> None:
        self.file = file
        self.text = text
        self.env = env
        self.workers = workers  # built-in names -> "package.module:factory" (the composition root's registry)
        self.factories = factories  # names -> factories given directly (tests, embedding)
        self.secrets: set[str] = set()
        self.sockets: set[str] | None = None  # the [[daemon.sockets]] names children may list (None: not checked)
        self.replicas: dict[str, Any] = {}  # path -> ReplicaSet, as the tree's tables are read
        self.singletons: dict[str, Any] = {}  # path -> Singleton
        self.isolated: dict[str, Any] = {}  # path -> the SupervisorSpec an isolated process runs
        self.cluster: Any = None  # the [cluster] table's config, read before the tree
        self.warnings: list[str] = []
        self.included: dict[str, list[Any]] = {}  # supervisor path -> the included files that add children to it
        self.included_used: set[str] = set()
        self.daemon_env: dict[str, str] = {}  # [daemon] env_file: every OS child gets these (under its own)
        self.host_checks = False  # also check what only this machine can say: programs, users (the daemon's loads)

    def secret(self, key: str, value: str, named: bool = True) -> None:
        """``value`` is redacted from everything the daemon writes, unless it cannot be a secret (a number, a path,
        a short word); ``named``: its key says it is one, so a value too short to be one is worth a warning."""
        if not value:
            return
        if not could_be_secret(value):
            if named and len(value) < MIN_SECRET:
                self.warnings.append(
                    f"{key}: shorter than {MIN_SECRET} characters, so it is not redacted from logs (a value that "
                    "short is not a secret); use a real secret"
                )
            return
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


def check_keys(ctx: Reader, table: Mapping[str, Any], allowed: set[str], key: str) -> None:
    for k in table:
        if k not in allowed:
            raise ctx.error(f"{key}.{k}" if key else k, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def typed(ctx: Reader, table: Mapping[str, Any], name: str, types: type | tuple[type, ...], key: str) -> Any:
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


def split_host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError says what is wrong."""
    addr = Address.tcp(value)
    return addr.host, addr.port
