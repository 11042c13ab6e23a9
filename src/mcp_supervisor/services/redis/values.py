"""What the cache stores and hands out: values as JSON in an envelope ``{"v": ...}`` so a miss (:data:`MISS`)
differs from a stored ``null``; pub/sub messages and the gaps a reconnect leaves; TTLs and their jitter."""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from typing import Any

from ..base import ServiceError


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"

    def __bool__(self) -> bool:
        return False


MISS: Any = _Miss()


class CacheError(ServiceError):
    """Redis answered with an error, or the value in Redis is not ours (not our JSON envelope)."""


@dataclass(frozen=True, slots=True)
class Message:
    """A pub/sub message. ``foreign``: not in our envelope (published by someone else): ``data`` is the payload as
    it came (text; bytes that are not UTF-8 stay bytes), ``timestamp`` when it was received, ``id`` empty."""

    data: Any
    timestamp: str
    id: str
    channel: str
    foreign: bool = False


@dataclass(frozen=True, slots=True)
class Gap:
    """The subscription reconnected: messages published meanwhile are lost (pub/sub is at-most-once)."""

    channel: str
    reconnected_at: str
    down_s: float


def encode(value: Any) -> str:
    try:
        return json.dumps({"v": value}, separators=(",", ":"), default=json_default)
    except (TypeError, ValueError) as e:
        raise CacheError(f"value is not JSON-serialisable: {e}") from None


def json_default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def decode(raw: bytes | str | None) -> Any:
    if raw is None:
        return MISS
    try:
        env = json.loads(raw)
    except ValueError:
        raise CacheError("a stored value is not JSON (written by something else?)") from None
    if not isinstance(env, dict) or set(env) != {"v"}:
        raise CacheError("a stored value is not in the cache envelope (written by something else?)")
    return env["v"]


def hit(raw: object) -> dict[str, Any]:
    return {"result": "miss" if raw is None else "hit"}


def ttl_seconds(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 1:
        raise ValueError(f"ttl: must be >= 1 second or None, got {ttl!r}")
    return int(ttl)


def jitter(ttl: int | None) -> int | None:
    if ttl is None:
        return None
    return max(1, round(ttl * random.uniform(0.9, 1.1)))
