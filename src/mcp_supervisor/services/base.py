"""What every service worker shares: settings helpers, timing into events, and handles that follow restarts.

A user's worker reaches a service by child path::

    db = service(ctx, "db")              # a reference, not a connection: it follows restarts of "db"
    rows = await db.fetch("SELECT 1")    # waits up to `wait` seconds while "db" restarts, then ServiceUnavailable

Calls go straight to the service's concurrency-safe handle (no mailbox round trip per query).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ..core import ChildContext, Event, EventBus, NoSuchPath, NotRunning, SupervisorError
from .events import ServiceOperation

T = TypeVar("T")
DEFAULT_WAIT = 2.0


class ServiceError(SupervisorError):
    """Root of the service workers' errors."""


class ServiceUnavailable(ServiceError):
    """The service is not running (restarting, stopped) or lost its server; retry later."""


class Settings:
    """Typed access to a worker's ``config`` table; every error names the setting."""

    def __init__(self, table: Mapping[str, Any], allowed: set[str]) -> None:
        for k in table:
            if k not in allowed:
                raise ValueError(f"{k}: unknown setting (allowed: {', '.join(sorted(allowed))})")
        self.table = table

    def text(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"{key}: must be a string, got {type(value).__name__}")
        text = str(value)
        if choices is not None and text not in choices:
            raise ValueError(f"{key}: must be one of {', '.join(choices)}, got {text!r}")
        return text

    def number(self, key: str, default: float, minimum: float = 0.0, integer: bool = False) -> float:
        value = self.table.get(key, default)
        if isinstance(value, str):
            try:
                value = int(value) if integer else float(value)
            except ValueError:
                raise ValueError(f"{key}: must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: must be a number, got {value!r}")
        if integer and int(value) != value:
            raise ValueError(f"{key}: must be a whole number, got {value!r}")
        if value < minimum:
            raise ValueError(f"{key}: must be >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = int(self.number(key, default, minimum, integer=True))
        if maximum is not None and value > maximum:
            raise ValueError(f"{key}: must be <= {maximum}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ValueError(f"{key}: must be true or false, got {value!r}")
        return value


def read_secret_file(key: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ValueError(f"{key}: cannot read {path!r}: {e.strerror or e}") from None


class Emitter:
    """Times operations and emits :class:`ServiceOperation` events (only when someone listens)."""

    def __init__(self, bus: EventBus, path: str, service: str) -> None:
        self.bus = bus
        self.path = path
        self.service = service

    def emit(self, event: Event) -> None:
        if self.bus.active:
            self.bus.emit(event)

    def op(self, operation: str, started: float, outcome: str = "ok", **extra: Any) -> None:
        if self.bus.active:
            self.bus.emit(
                ServiceOperation(
                    path=self.path,
                    service=self.service,
                    operation=operation,
                    outcome=outcome,  # type: ignore[arg-type]
                    duration_s=time.perf_counter() - started,
                    **extra,
                )
            )


async def retry_connect(
    connect: Callable[[], Awaitable[T]], attempts: int, initial: float, maximum: float, what: str
) -> T:
    """Connect with bounded exponential backoff and jitter; the last error propagates (a start failure)."""
    import random

    delay = initial
    for attempt in range(1, attempts + 1):
        try:
            return await connect()
        except (OSError, TimeoutError, ConnectionError) as e:
            if attempt == attempts:
                raise ConnectionError(f"{what}: could not connect after {attempts} attempts: {e}") from e
        except Exception as e:
            name = type(e).__name__
            if "Connection" not in name and "CannotConnect" not in name and "Unavailable" not in name:
                raise
            if attempt == attempts:
                raise ConnectionError(f"{what}: could not connect after {attempts} attempts: {e}") from e
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(maximum, delay * 2)
    raise AssertionError("unreachable")


class ServiceRef:
    """A reference to the service at ``path`` that resolves its current handle on every call."""

    def __init__(self, ctx: ChildContext, path: str, wait: float = DEFAULT_WAIT) -> None:
        self._ctx = ctx
        self._path = path
        self._wait = wait

    async def current(self) -> Any:
        try:
            return await self._ctx.handle(self._path, self._wait)
        except (NotRunning, NoSuchPath) as e:
            raise ServiceUnavailable(f"{self._path} is unavailable: {e}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Deferred(self, name)


class _Deferred:
    def __init__(self, ref: ServiceRef, name: str) -> None:
        self._ref = ref
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> _Pending:
        return _Pending(self._ref, self._name, args, kwargs)


class _Pending:
    """Either awaited (a call) or used as ``async with`` / ``async for`` (a context manager or an iterator)."""

    def __init__(self, ref: ServiceRef, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._ref, self._name, self._args, self._kwargs = ref, name, args, kwargs
        self._cm: Any = None
        self._it: Any = None

    async def _target(self) -> Any:
        handle = await self._ref.current()
        return getattr(handle, self._name)(*self._args, **self._kwargs)

    def __await__(self) -> Any:
        async def go() -> Any:
            result = await self._target()
            return await result if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future) else result

        return go().__await__()

    async def __aenter__(self) -> Any:
        self._cm = await self._target()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._cm.__aexit__(*exc)

    def __aiter__(self) -> _Pending:
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            self._it = (await self._target()).__aiter__()
        return await self._it.__anext__()


def service(ctx: ChildContext, path: str, wait: float = DEFAULT_WAIT) -> Any:
    """A reference to the service child at ``path`` (see the module docstring)."""
    return ServiceRef(ctx, path, wait)
