"""``[[daemon.alerts]]``: where the daemon sends word of crash loops, OOM kills, a supervisor giving up, a refused
reload — a webhook (JSON, Slack, Discord, ntfy) or a command. Webhook URLs and header values are secrets."""

from __future__ import annotations

import re
import shutil
from typing import Any
from urllib.parse import urlsplit

from ..core import describe
from .model import ALERT_EVENTS, ALERT_FORMATS, DEFAULT_ALERT_EVENTS, AlertConfig
from .reader import Reader, check_keys, numbers, typed
from .settings import kind_of, read_small_file, show

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
_KEYS = {"name", "on", "paths", "webhook", "webhook_file", "exec", "format", "headers", "rate", "per", "retries",
         "timeout"}  # fmt: skip


def alerts(ctx: Reader, value: Any) -> tuple[AlertConfig, ...]:
    """Every ``[[daemon.alerts]]`` entry, checked in file order."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ctx.error("daemon.alerts", "must be an array of tables ([[daemon.alerts]])")
    out: list[AlertConfig] = []
    for i, t in enumerate(value):
        key = f"daemon.alerts[{i}]"
        if not isinstance(t, dict):
            raise ctx.error(key, f"must be a table, got {kind_of(t)}")
        entry = _alert(ctx, t, key)
        if any(a.name == entry.name for a in out):
            raise ctx.error(f"{key}.name", f"{entry.name!r} is declared twice")
        out.append(entry)
    return tuple(out)


def _alert(ctx: Reader, t: dict[str, Any], key: str) -> AlertConfig:
    check_keys(ctx, t, _KEYS, key)
    name = t.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ctx.error(f"{key}.name", f"must be a name of letters, digits, '-' and '_', got {show('', name)}")
    on = _words(ctx, t, "on", key, ALERT_EVENTS) or DEFAULT_ALERT_EVENTS
    paths = _strings(ctx, t, "paths", key)
    if sum(k in t for k in ("webhook", "webhook_file", "exec")) != 1:
        raise ctx.error(key, 'needs exactly one of "webhook", "webhook_file" (a URL in a file) or "exec" (a command)')
    webhook = _webhook(ctx, t, key)
    command = _exec(ctx, t, key)
    fmt = typed(ctx, t, "format", str, key) or "json"
    if fmt not in ALERT_FORMATS:
        raise ctx.error(f"{key}.format", f"must be one of {', '.join(ALERT_FORMATS)}, got {show('', fmt)}")
    if command and "format" in t:
        raise ctx.error(f"{key}.format", "applies to a webhook; a command always gets the alert as JSON on stdin")
    headers = _headers(ctx, t, key)
    if command and headers:
        raise ctx.error(f"{key}.headers", "apply to a webhook, not to a command")
    nums = numbers(t, ("rate", "per", "retries", "timeout"))
    rate = _bounded(ctx, nums, "rate", key, 20, 1, 10_000, whole=True)
    per = _bounded(ctx, nums, "per", key, 600.0, 1, 86_400)
    retries = _bounded(ctx, nums, "retries", key, 5, 0, 20, whole=True)
    timeout = _bounded(ctx, nums, "timeout", key, 10.0, 0.1, 300)
    return AlertConfig(name=name, on=on, paths=paths, webhook=webhook, format=fmt, headers=headers, exec=command,
                       rate=int(rate), per=float(per), retries=int(retries), timeout=float(timeout))  # fmt: skip


def _words(ctx: Reader, t: dict[str, Any], name: str, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    words = _strings(ctx, t, name, key)
    for w in words:
        if w not in allowed:
            raise ctx.error(f"{key}.{name}", f"unknown event {w!r} (one of: {', '.join(allowed)})")
    return words


def _strings(ctx: Reader, t: dict[str, Any], name: str, key: str) -> tuple[str, ...]:
    value = t.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ctx.error(f"{key}.{name}", f"must be a non-empty array of strings, got {show('', value)}")
    return tuple(value)


def _webhook(ctx: Reader, t: dict[str, Any], key: str) -> str | None:
    if "webhook_file" in t:
        path = typed(ctx, t, "webhook_file", str, key) or ""
        try:
            url = read_small_file(path).strip()
        except (OSError, ValueError) as e:
            raise ctx.error(f"{key}.webhook_file", f"cannot be read ({describe(e)})") from None
        where = f"{key}.webhook_file"
    elif "webhook" in t:
        url, where = typed(ctx, t, "webhook", str, key) or "", f"{key}.webhook"
    else:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # never quote it: a webhook URL is a credential
        raise ctx.error(where, "must be an http:// or https:// URL with a host")
    ctx.secret(where, url, named=False)
    if len(parts.path) > 1:
        ctx.secret(where, parts.path.lstrip("/"), named=False)  # Slack's and Discord's secret is the path
    if parts.password:
        ctx.secret(where, parts.password, named=False)
    return url


def _exec(ctx: Reader, t: dict[str, Any], key: str) -> tuple[str, ...]:
    if "exec" not in t:
        return ()
    command = _strings(ctx, t, "exec", key)
    if ctx.host_checks and "/" not in command[0] and shutil.which(command[0]) is None:
        raise ctx.error(f"{key}.exec", f"{command[0]!r} is not found on PATH (give its absolute path)")
    return command


def _headers(ctx: Reader, t: dict[str, Any], key: str) -> tuple[tuple[str, str], ...]:
    value = t.get("headers")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ctx.error(f"{key}.headers", f'must be a table ({{ Authorization = "Bearer ..." }}), got {kind_of(value)}')
    out: list[tuple[str, str]] = []
    for name, v in value.items():
        if not _HEADER.fullmatch(name):
            raise ctx.error(f"{key}.headers.{name}", "is not a valid HTTP header name")
        if not isinstance(v, str) or "\n" in v or "\r" in v:
            raise ctx.error(f"{key}.headers.{name}", f"must be a one-line string, got {kind_of(v)}")
        ctx.secret(f"{key}.headers.{name}", v, named=False)
        for word in v.split():
            ctx.secret(f"{key}.headers.{name}", word, named=False)  # "Bearer <token>": the token alone too
        out.append((name, v))
    return tuple(out)


def _bounded(  # noqa: PLR0917
    ctx: Reader, nums: dict[str, Any], name: str, key: str, default: float, low: float, high: float, whole: bool = False
) -> float:
    value = nums.get(name, default)
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "an integer" if whole else "a number"
        raise ctx.error(f"{key}.{name}", f"must be {what} {low:g}..{high:g}, got {show('', value)}")
    return float(value)
