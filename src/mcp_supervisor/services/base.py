"""What every service worker shares: settings helpers, timing into events, and handles that follow restarts.

A user's worker reaches a service by child path::

    db = service(ctx, "db")              # a reference, not a connection: it follows restarts of "db"
    rows = await db.fetch("SELECT 1")    # waits up to `wait` seconds while "db" restarts, then ServiceUnavailable

Calls go straight to the service's concurrency-safe handle (no mailbox round trip per query).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..core import ChildContext, Event, EventBus, NoSuchPath, NotRunning, SupervisorError, describe
from .events import ServiceOperation

T = TypeVar("T")
DEFAULT_WAIT = 2.0


class ServiceError(SupervisorError):
    """Root of the service workers' errors."""


class ServiceUnavailable(ServiceError):
    """The service is not running (restarting, stopped) or lost its server; retry later."""


class Handle:
    """What every service handle shares: it knows when its worker has stopped.

    A handle outlives its worker when a caller holds it across a restart (``service()`` references resolve a fresh
    one per call, but a call already in flight keeps the old one). Its client is closed then, and the client's own
    error for that says nothing useful; a call on a closed handle, or one that fails because the handle closed under
    it, is :class:`ServiceUnavailable`.
    """

    closed = False
    service_name = "service"

    def unavailable(self, what: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"the {self.service_name} worker stopped (restarting or removed) during {what}; call again to use its "
            "new incarnation"
        )

    def check_open(self, what: str, pending: object = None) -> None:
        """Raise ServiceUnavailable when closed; ``pending`` (a coroutine made for the call) is closed unawaited."""
        if self.closed:
            if asyncio.iscoroutine(pending):
                pending.close()
            raise self.unavailable(what)


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
                raise ConnectionError(f"{what}: could not connect after {attempts} attempts: {describe(e)}") from e
        except Exception as e:
            name = type(e).__name__
            if "Connection" not in name and "CannotConnect" not in name and "Unavailable" not in name:
                raise
            if attempt == attempts:
                raise ConnectionError(f"{what}: could not connect after {attempts} attempts: {describe(e)}") from e
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
