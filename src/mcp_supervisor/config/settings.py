"""Validated access to a worker's ``config`` table: one validator for every worker, built-in or yours.

A worker factory receives its child's ``config`` table and validates it before anything starts::

    def factory(config):
        s = Settings(config, {"every", "url"})
        every = s.seconds("every", 5.0, minimum=0.1)
        ...

Every check raises :class:`SettingError` with the key (``"port"``, ``"system.rss_warn_mb"``) and what is wrong;
the config loader turns it into ``file:line: tree.children[2].config.port: must be an integer 1..65535, got inf``.
Numbers must be finite (``inf`` and ``nan`` are rejected), integers whole, booleans are never numbers, and every
number has a sane range. A value under a key that names a secret (``password``, ``token``, ``secret_key``, ...)
is never quoted in a message: only its type is.

Standard library only, so any worker can use it.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from typing import Any

DAY = 86_400.0
MAX_TEXT = 64 * 1024  # characters in one text setting
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INT_TEXT = re.compile(r"[+-]?\d+")
# a name ending in one of these words holds a secret (token_check_interval does not; vault_token does)
_SECRET = re.compile(
    r"(?:^|[_\-.])(?:password|passwd|pwd|pass|secret|token|credentials?|(?:api|private|secret|access)_?key|auth|dsn|url)$",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    """True when a setting's name says it holds a secret (``password``, ``vault_token``, ``secret_key``...).

    ``*_file`` settings name a file, not a secret: their paths may be shown (the file's contents never are).
    """
    last = key.rsplit(".", 1)[-1]
    return not last.endswith("_file") and _SECRET.search(last) is not None


def kind_of(value: object) -> str:
    """The TOML type of ``value`` in words (``an integer``, ``a string``...), for messages that cannot quote it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def show(key: str, value: object, limit: int = 80) -> str:
    """How a message shows a bad ``value``: its repr (shortened) unless ``key`` names a secret, then its type."""
    if is_secret_key(key):
        return kind_of(value)
    if isinstance(value, Mapping | list | tuple):
        return kind_of(value)  # a table or array may hold secrets; say what it is, not what is in it
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SettingError(ValueError):
    """A bad setting. ``key`` is its path inside the ``config`` table ("" for the table itself)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


class Settings:
    """Typed, bounded reads of one ``config`` table; unknown keys are rejected up front."""

    def __init__(self, table: object, allowed: Iterable[str], prefix: str = "") -> None:
        if not isinstance(table, Mapping):
            raise SettingError(prefix, f"must be a table, got {kind_of(table)}")
        allowed = set(allowed)
        for k in table:
            if k not in allowed:
                raise SettingError(
                    self._join(prefix, str(k)), f"unknown setting (allowed: {', '.join(sorted(allowed))})"
                )
        self.table: Mapping[str, Any] = table
        self.prefix = prefix

    @staticmethod
    def _join(prefix: str, key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    def key(self, name: str) -> str:
        return self._join(self.prefix, name)

    def has(self, name: str) -> bool:
        return self.table.get(name) is not None

    def error(self, name: str, message: str) -> SettingError:
        return SettingError(self.key(name), message)

    # -- scalars -------------------------------------------------------------------------------------------
    def text(
        self, name: str, default: str | None = None, choices: tuple[str, ...] | None = None, *, max_len: int = MAX_TEXT
    ) -> str | None:
        """A string (an integer is taken as its digits, e.g. ``kv_version = 2``); None when absent."""
        value = self.table.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(name, f"must be a string, got {show(self.key(name), value)}")
        text = str(value)
        if "\x00" in text:
            raise self.error(name, "must not contain a NUL character")
        if len(text) > max_len:
            raise self.error(name, f"must be at most {max_len} characters, got {len(text)}")
        if choices is not None and text not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {show(self.key(name), value)}")
        return text

    def _numeric(self, name: str, value: object, integer: bool) -> float | int:
        if isinstance(value, str):  # "${VAR}" expanded to text that spells a number
            pattern = _INT_TEXT if integer else _NUMBER_TEXT
            if not pattern.fullmatch(value.strip()):
                want = "an integer" if integer else "a number"
                raise self.error(name, f"must be {want}, got {show(self.key(name), value)}")
            value = int(value) if integer else float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            want = "an integer" if integer else "a number"
            raise self.error(name, f"must be {want}, got {show(self.key(name), value)}")
        return value

    def number(
        self, name: str, default: float, minimum: float = 0.0, maximum: float | None = None, *, above: bool = False
    ) -> float:
        """A finite number within ``minimum``..``maximum`` (``above``: strictly greater than ``minimum``)."""
        value = self._numeric(name, self.table.get(name, default), integer=False)
        lo = f"> {_fmt(minimum)}" if above else f">= {_fmt(minimum)}"
        want = f"a number {lo}" + (f" and <= {_fmt(maximum)}" if maximum is not None else "")
        if (
            not math.isfinite(value)
            or value < minimum
            or (above and value == minimum)
            or (maximum is not None and value > maximum)
        ):
            raise self.error(name, f"must be {want}, got {show(self.key(name), value)}")
        return float(value)

    def seconds(
        self, name: str, default: float, minimum: float = 0.0, maximum: float = DAY, *, above: bool = False
    ) -> float:
        """A duration in seconds; at most a day unless the caller allows more."""
        return self.number(name, default, minimum, maximum, above=above)

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int = 2**31 - 1) -> int:
        """A whole number within ``minimum``..``maximum``: rejects inf, nan, fractions and booleans."""
        given = self._numeric(name, self.table.get(name, default), integer=True)
        bad = isinstance(given, float) and (not math.isfinite(given) or not given.is_integer())
        if bad or not minimum <= given <= maximum:
            raise self.error(name, f"must be an integer {minimum}..{maximum}, got {show(self.key(name), given)}")
        return int(given)

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, 1, 65535)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.table.get(name, default)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {show(self.key(name), value)}")
        return value

    # -- compound ------------------------------------------------------------------------------------------
    def strings(
        self, name: str, default: tuple[str, ...] | None = None, *, nonempty: bool = True
    ) -> tuple[str, ...] | None:
        """An array of strings (each non-empty unless ``nonempty`` is False); None when absent."""
        value = self.table.get(name)
        if value is None:
            return default
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"must be an array of strings, got {kind_of(value)}")
        for i, v in enumerate(value):
            if (nonempty and not v) or "\x00" in v or len(v) > MAX_TEXT:
                raise SettingError(f"{self.key(name)}[{i}]", "must be a non-empty string without NUL")
        return tuple(value)

    def section(self, name: str, allowed: Iterable[str]) -> Settings:
        """A nested table (``system = { rss_warn_mb = 512 }``) with its own allowed keys; empty when absent."""
        value = self.table.get(name)
        return Settings({} if value is None else value, allowed, self.key(name))


MAX_SECRET_FILE = 64 * 1024


def read_small_file(path: str, limit: int = MAX_SECRET_FILE) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes.

    Opened without blocking (a FIFO cannot hang us) and refused unless it is a regular file (``/dev/zero`` cannot
    exhaust memory). Raises OSError or ValueError with a reason that never quotes the contents.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"larger than {limit} bytes")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise ValueError(f"larger than {limit} bytes")
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def read_secret_file(key: str, path: str) -> str:
    """The stripped contents of a secret file (a systemd credential, say); SettingError names the setting."""
    try:
        return read_small_file(path).strip()
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise SettingError(key, f"cannot read {show(key, path)}: {reason}") from None
