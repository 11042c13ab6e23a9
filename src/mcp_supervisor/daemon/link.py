"""The framed protocol between the daemon and an isolated subtree's process (``isolation = "process"``), over the
control channel the daemon gives that process (a connected unix socket pair; ``ProcessSpec.control``).

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON: one object whose ``t`` says what it is.

================================================================  ====================================================
``{"t": "event", "event": {"type": "ChildExited", ...}}``         subtree → daemon: an event of its tree, its path
                                                                  under the isolated supervisor's
``{"t": "status", "pid": N, "children": [...], "names": [...]}``  subtree → daemon: its tree and registered names
``{"t": "req", "id": N, "op": "...", ...}``                       either way: a request (``call``, ``cast``,
                                                                  ``restart``, ``stop``, ``start``, ``signal``,
                                                                  ``reload``)
``{"t": "rep", "id": N, "ok": true, "value": ...}``               its answer; or ``"ok": false, "error": "NotRunning",
                                                                  "message": "..."`` (raised as that error)
================================================================  ====================================================

JSON, never pickle: the daemon reads what an isolated process — possibly running untrusted code — wrote, and
unpickling it would let that process run code in the daemon. So messages that cross the boundary (``call``,
``cast``) must be JSON values: dicts with string keys, lists, strings, numbers, booleans and None (tuples arrive as
lists). Anything else fails at the sender with a ``TypeError`` that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ..core import (
    CalleeExited,
    CallError,
    CallTimeout,
    ChildExited,
    ChildStarted,
    ChildUnstopped,
    CrashLoopEnded,
    CrashLoopStarted,
    EscapeeKilled,
    Event,
    ExitReason,
    FailedToStartChild,
    IntensityExceeded,
    LoopBlocked,
    MailboxFull,
    NotRunning,
    OperationError,
    ProcessOutput,
    RestartScheduled,
    ShutdownTimeout,
    SpecWarning,
    StartFailed,
    SupervisorStopped,
)

MAX_FRAME = 16 * 1024 * 1024
"""The largest frame either side accepts (a bigger one closes the channel: the peer is not speaking our protocol)."""

MAX_BUFFERED = 8 * 1024 * 1024
"""Bytes waiting to be sent beyond which events are dropped (an event bus drops for a slow subscriber too)."""

_HEADER = struct.Struct(">I")

ERRORS: dict[str, type[Exception]] = {
    "NotRunning": NotRunning, "CallTimeout": CallTimeout, "CalleeExited": CalleeExited, "MailboxFull": MailboxFull,
    "CallError": CallError, "OperationError": OperationError, "LookupError": LookupError, "ValueError": ValueError,
    "TypeError": TypeError,
}  # fmt: skip
"""The errors that cross the boundary as themselves; any other is a ``CallError`` naming its type."""

Requests = Callable[[dict[str, Any]], Awaitable[Any]]
Messages = Callable[[dict[str, Any]], None]


def encode(doc: dict[str, Any]) -> bytes:
    """One frame; TypeError (naming the rule) when ``doc`` holds something JSON cannot carry."""
    try:
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"a message across an isolated subtree's boundary must be JSON (dict, list, str, int, "
                        f"float, bool, None): {e}") from None  # fmt: skip
    if len(body) > MAX_FRAME:
        raise ValueError(f"a message across an isolated subtree's boundary is at most {MAX_FRAME} bytes as JSON, "
                         f"this one is {len(body)}")  # fmt: skip
    return _HEADER.pack(len(body)) + body


def error_of(doc: dict[str, Any]) -> Exception:
    """The exception a ``rep`` with ``ok: false`` stands for."""
    name, message = str(doc.get("error", "CallError")), str(doc.get("message", ""))
    make = ERRORS.get(name)
    return make(message) if make is not None else CallError(f"{name}: {message}")


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, FailedToStartChild):
        return "OperationError"  # a failed start is "not valid now" to whoever asked (the admin port's 409)
    return next((name for name, cls in ERRORS.items() if isinstance(exc, cls)), type(exc).__name__)


EVENTS: dict[str, type[Event]] = {cls.__name__: cls for cls in (
    ChildStarted, ChildExited, CrashLoopStarted, CrashLoopEnded, StartFailed, RestartScheduled, IntensityExceeded,
    SupervisorStopped, ShutdownTimeout, ChildUnstopped, ProcessOutput, EscapeeKilled, SpecWarning, LoopBlocked,
)}  # fmt: skip
"""The events an isolated subtree passes to the daemon (its tree's own; a worker's custom events stay inside)."""


def event_doc(ev: Event, prefix: str) -> dict[str, Any] | None:
    """``ev`` as a frame's ``event``, its path under ``prefix`` (the isolated supervisor's); None if not passed on."""
    if type(ev).__name__ not in EVENTS:
        return None
    doc = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)}
    doc["path"] = f"{prefix}/{ev.path}" if ev.path else prefix
    for key, value in doc.items():
        if isinstance(value, ExitReason):
            doc[key] = dataclasses.asdict(value)
    doc["type"] = type(ev).__name__
    return doc


def event_of(doc: Any) -> Event | None:
    """The event a frame's ``event`` stands for; None when it is not one we know (a newer peer, a broken one)."""
    if not isinstance(doc, dict):
        return None
    cls = EVENTS.get(str(doc.get("type")))
    if cls is None:
        return None
    args: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in doc:
            continue
        value = doc[f.name]
        if isinstance(value, dict):
            value = ExitReason(**value)
        elif isinstance(value, list):
            value = tuple(value)
        args[f.name] = value
    try:
        return cls(**args)
    except TypeError:
        return None


class Link(asyncio.Protocol):
    """One end of the control channel: frames in (parsed as they arrive), frames out (``send``), requests both
    ways. A protocol rather than streams: a frame costs no coroutine step on either side (the call round trip)."""

    def __init__(self, requests: Requests, messages: Messages) -> None:
        self._requests, self._messages = requests, messages
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.dropped = 0  # droppable frames not sent (the peer did not keep up)

    @classmethod
    async def open(cls, sock: socket.socket, requests: Requests, messages: Messages) -> Link:
        link = cls(requests, messages)
        await asyncio.get_running_loop().create_unix_connection(lambda: link, sock=sock)
        return link

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's are not asyncio.Transport subclasses)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf)
            if size > MAX_FRAME:  # not speaking our protocol: the channel closes
                self.close()
                return
            end = _HEADER.size + size
            if len(buf) < end:
                return
            try:
                doc = json.loads(bytes(buf[_HEADER.size : end]))
            except ValueError:
                doc = None
            del buf[:end]
            if not isinstance(doc, dict):
                self.close()
                return
            self._dispatch(doc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        if not self._ended.done():
            self._ended.set_result(None)

    # -- frames and requests ----------------------------------------------------------------------------------
    def send(self, doc: dict[str, Any], droppable: bool = False) -> None:
        """A frame out (buffered; the channel is a local socket the peer keeps reading). A ``droppable`` one (an
        event) is dropped, and counted, while more than :data:`MAX_BUFFERED` bytes wait: a peer that stops reading
        never makes this process grow without bound."""
        transport = self._transport
        if self.closed or transport is None:
            return
        if droppable and transport.get_write_buffer_size() > MAX_BUFFERED:
            self.dropped += 1
            return
        transport.write(encode(doc))

    async def request(self, doc: dict[str, Any], timeout: float | None = None) -> Any:
        """Send a request and wait for its answer (at most ``timeout`` seconds: ``TimeoutError``); the peer's error
        is raised as itself (:data:`ERRORS`); ``CalleeExited`` when the channel closes first."""
        if self.closed or self._transport is None:
            raise CalleeExited("the isolated subtree's process is not running (its control channel is closed)")
        self._next += 1
        ident = self._next
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._transport.write(encode({**doc, "t": "req", "id": ident}))
        self._pending[ident] = fut
        try:
            if timeout is None:
                return await fut
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(ident, None)

    async def run(self) -> None:
        """Until the peer closes the channel (or breaks the protocol); what waits has failed by then."""
        await asyncio.shield(self._ended)

    def _dispatch(self, doc: dict[str, Any]) -> None:
        kind = doc.get("t")
        if kind == "rep":
            fut = self._pending.get(doc.get("id", -1))
            if fut is not None and not fut.done():
                if doc.get("ok"):
                    fut.set_result(doc.get("value"))
                else:
                    fut.set_exception(error_of(doc))
        elif kind == "req":
            task = asyncio.ensure_future(self._answer(doc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._messages(doc)

    async def _answer(self, doc: dict[str, Any]) -> None:
        ident = doc.get("id")
        try:
            value = await self._requests(doc)
            frame = encode({"t": "rep", "id": ident, "ok": True, "value": value})
        except Exception as e:  # noqa: BLE001 - every failure is the caller's answer
            frame = encode({"t": "rep", "id": ident, "ok": False, "error": _error_name(e), "message": str(e)})
        if not self.closed and self._transport is not None:
            self._transport.write(frame)

    async def aclose(self) -> None:
        """Close once what is buffered has gone out (the process is about to exit)."""
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.shield(self._ended)

    def close(self) -> None:
        """Close the channel (what is buffered still goes out) and fail what waits for an answer."""
        if self.closed:
            return
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CalleeExited("the isolated subtree's process ended before it answered"))
        self._pending.clear()
        for task in self._tasks:
            task.cancel()
        if self._transport is not None:
            self._transport.close()
        elif not self._ended.done():
            self._ended.set_result(None)


async def call_over(link: Link | None, target: str, payload: Any, timeout: float | None) -> Any:
    """A ``call`` through ``link`` with a local call's timeout and errors."""
    if link is None or link.closed:
        raise NotRunning(f"nothing running as {target!r} (unknown, restarting or without a mailbox)")
    try:
        return await link.request({"op": "call", "to": target, "msg": payload, "timeout": timeout}, timeout)
    except TimeoutError:
        if timeout is None:
            raise
        raise CallTimeout(f"no reply within {timeout:g}s; a late reply will be dropped") from None


async def cast_over(link: Link | None, target: str, payload: Any) -> None:
    """A ``cast`` through ``link``: delivered (it waits for room, as a local cast does) or the local errors."""
    if link is None or link.closed:
        raise NotRunning(f"nothing running as {target!r} (unknown, restarting or without a mailbox)")
    await link.request({"op": "cast", "to": target, "msg": payload})
