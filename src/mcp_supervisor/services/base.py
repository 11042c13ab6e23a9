"""What every service worker shares: typed references that follow restarts, timing into events, handle state.

A user's worker reaches a service by child path and handle type::

    db = service(ctx, "db", Database)    # a reference, not a connection: it follows restarts of "db"
    rows = await (await db.get()).fetch("SELECT 1")
    async with db as h:                  # h: Database; waits up to `wait` s while "db" restarts,
        await h.execute("...")           # then ServiceUnavailable

Calls go straight to the service's concurrency-safe handle (no mailbox round trip per query).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar

from ..core import ChildContext, Event, NoSuchPath, NotRunning, SupervisorError, describe
from ..core.clock import Deadline
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


Outcome = Literal["ok", "error", "timeout"]


class Emitter:
    """Times a service's operations and reports them as :class:`ServiceOperation` events (when someone listens)."""

    __slots__ = ("_ctx", "path", "service")

    def __init__(self, ctx: ChildContext[Any], service: str) -> None:
        self._ctx = ctx
        self.path = ctx.path
        self.service = service

    @property
    def active(self) -> bool:
        return self._ctx.listened

    def emit(self, event: Event) -> None:
        self._ctx.emit(event)

    def op(self, operation: str, started: float, outcome: Outcome = "ok", **extra: Any) -> None:
        if self._ctx.listened:
            self._ctx.emit(
                ServiceOperation(
                    path=self.path,
                    service=self.service,
                    operation=operation,
                    outcome=outcome,
                    duration_s=time.perf_counter() - started,
                    **extra,
                )
            )

    async def measure(
        self,
        operation: str,
        call: Awaitable[T],
        fail: Callable[[Exception], Exception],
        *,
        timeout: float | None = None,
        detail: Callable[[T], dict[str, Any]] | None = None,
        **extra: Any,
    ) -> T:
        """The services' one helper: await ``call``, bounded by ``timeout``; report its outcome and duration; on a
        failure raise what ``fail`` maps it to (``ServiceUnavailable`` for a lost server, a typed error otherwise;
        returning the exception itself re-raises it). An expired timeout reaches ``fail`` as a ``TimeoutError``.
        ``detail`` adds fields computed from the result (a cache hit or miss)."""
        t0 = time.perf_counter()
        deadline: Deadline | None = None
        if timeout is not None:
            deadline = Deadline()
            deadline.arm(timeout)
        try:
            result = await call
        except asyncio.CancelledError:
            if deadline is None or not deadline.expired_here():
                raise
            self.op(operation, t0, "timeout", **extra)
            raise fail(TimeoutError(f"{operation} did not finish within {timeout:g}s")) from None
        except Exception as e:
            mapped = fail(e)
            timed_out = isinstance(mapped, TimeoutError) or "Timeout" in type(e).__name__
            self.op(operation, t0, "timeout" if timed_out else "error", **extra)
            if mapped is e:
                raise
            raise mapped from e
        finally:
            if deadline is not None:
                deadline.disarm()
        if self._ctx.listened:
            self.op(operation, t0, **(detail(result) if detail is not None else {}), **extra)
        return result


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


class ServiceRef(Generic[T]):
    """A reference to the service at ``path``, whose handle is a ``kind``; it resolves the current handle on use."""

    __slots__ = ("_ctx", "_kind", "_path", "_wait")

    def __init__(self, ctx: ChildContext[Any], path: str, kind: type[T], wait: float = DEFAULT_WAIT) -> None:
        self._ctx = ctx
        self._path = path
        self._kind = kind
        self._wait = wait

    async def get(self) -> T:
        """The running service's handle, waiting up to ``wait`` seconds while it (re)starts.

        Raises ServiceUnavailable when it is not back in time, ServiceError when the child's handle is not a ``kind``.
        """
        try:
            handle = await self._ctx.handle(self._path, self._wait)
        except (NotRunning, NoSuchPath) as e:
            raise ServiceUnavailable(f"{self._path} is unavailable: {e}") from None
        if not isinstance(handle, self._kind):
            raise ServiceError(f"{self._path} provides a {type(handle).__name__}, not a {self._kind.__name__}")
        return handle

    async def __aenter__(self) -> T:
        return await self.get()

    async def __aexit__(self, *exc: object) -> None:
        return None


def service(ctx: ChildContext[Any], path: str, kind: type[T], wait: float = DEFAULT_WAIT) -> ServiceRef[T]:
    """A typed reference to the service child at ``path`` (see the module docstring)."""
    return ServiceRef(ctx, path, kind, wait)
