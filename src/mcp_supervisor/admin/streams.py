"""``GET /events`` and ``GET /children/{path}/logs``: recent history as JSON lines, or followed live as Server-Sent
Events (``?follow=1`` or ``Accept: text/event-stream``).

A stream reads the daemon's :class:`~mcp_supervisor.journal.Journal` and never holds up the writers: when it falls
behind the journal's bounds it gets a ``gap`` event saying how many it missed; a write that does not drain within
``WRITE_TIMEOUT`` closes the stream; at most ``MAX_STREAMS`` are open at once (429 beyond). A reconnecting client
sends ``Last-Event-ID`` (or ``?last_event_id=``) and gets what it missed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..journal import Journal, LogLine, matches

MAX_STREAMS = 32
WRITE_TIMEOUT = 10.0
KEEPALIVE = 15.0  # a comment line this often: proxies keep the stream open, dead clients are noticed
DEFAULT_EVENTS = 100
DEFAULT_LINES = 100

ErrorFn = Callable[..., web.Response]


def _int(request: web.Request, name: str, default: int, maximum: int) -> int:
    values = request.query.getall(name, [])
    if not values:
        return default
    if len(values) > 1:
        raise ValueError(f"query parameter {name!r} given more than once")
    raw = values[0]
    if not raw.isdigit() or len(raw) > 12:
        raise ValueError(f"query parameter {name!r} must be a whole number 0..{maximum}, got {raw[:20]!r}")
    return min(int(raw), maximum)


def _last_id(request: web.Request) -> int | None:
    """Where a reconnecting client left off: the ``Last-Event-ID`` header, or ``?last_event_id=``."""
    header = request.headers.get("Last-Event-ID")
    if header is not None and "last_event_id" not in request.query:
        if not header.isdigit() or len(header) > 12:
            raise ValueError("Last-Event-ID must be a whole number")
        return int(header)
    if "last_event_id" in request.query:
        return _int(request, "last_event_id", 0, 10**12)
    return None


def wants_stream(request: web.Request, follow: bool | None) -> bool:
    if follow is not None:
        return follow
    return "text/event-stream" in request.headers.get("Accept", "")


class Streams:
    """The open streams of one admin port, and the two endpoints."""

    def __init__(self, journal: Callable[[], Journal | None], error: ErrorFn, redact: Callable[[Any], Any]) -> None:
        self._journal = journal
        self._error = error
        self._redact = redact
        self.open = 0
        self.max_streams = MAX_STREAMS
        self.write_timeout = WRITE_TIMEOUT
        self.closed_slow = 0  # streams closed because their reader stopped reading

    def _get_journal(self) -> Journal:
        journal = self._journal()
        if journal is None:
            raise web.HTTPServiceUnavailable(reason="no journal")
        return journal

    async def _start(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await resp.prepare(request)
        return resp

    async def _send(self, resp: web.StreamResponse, chunk: str) -> None:
        try:
            async with asyncio.timeout(self.write_timeout):  # a reader that stopped reading: close its stream
                await resp.write(chunk.encode())
        except TimeoutError:
            self.closed_slow += 1
            raise

    def _too_many(self) -> web.Response:
        resp = self._error(429, f"at most {self.max_streams} streams may be open at once; close one and retry")
        resp.headers["Retry-After"] = "5"
        return resp

    # -- /events -------------------------------------------------------------------------------------------------
    async def events(self, request: web.Request, follow: bool | None) -> web.StreamResponse:
        journal = self._get_journal()
        prefixes = request.query.getall("path", [])
        last = _last_id(request)
        if not wants_stream(request, follow):
            n = _int(request, "limit", DEFAULT_EVENTS, journal.capacity)
            missed, docs = journal.events_after(last if last is not None else 0)
            docs = [d for d in docs if matches(d, prefixes)]
            docs = docs[:n] if last is not None else docs[len(docs) - n :] if n else []
            body = "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in docs)
            headers = {"Cache-Control": "no-store", "X-Missed-Events": str(missed)}
            return web.Response(text=body, content_type="application/x-ndjson", headers=headers)
        if self.open >= self.max_streams:
            return self._too_many()
        cursor = last if last is not None else journal.last_id

        async def pump(resp: web.StreamResponse) -> None:
            nonlocal cursor
            while True:
                missed, entries = journal.entries_after(cursor, limit=1000)
                if missed:
                    await self._send(resp, _gap(missed))
                if not entries:
                    cursor = max(cursor, journal.last_id) if missed else cursor
                    await self._wait(journal, resp, request)
                    continue
                cursor = entries[-1].id
                out = "".join(e.sse for e in entries if not prefixes or matches(e.doc, prefixes))
                if out:
                    await self._send(resp, out)

        return await self._stream(request, pump)

    # -- /children/{path}/logs -----------------------------------------------------------------------------------
    async def logs(self, request: web.Request, path: str, known: bool, follow: bool | None) -> web.StreamResponse:
        journal = self._get_journal()
        ring = journal.rings.get(path)
        if ring is None and not known:
            return self._error(404, f"no child at {path!r}, and no output kept for it")
        n = _int(request, "lines", DEFAULT_LINES, 100_000)
        if not wants_stream(request, follow):
            lines = ring.tail(n) if ring is not None else []
            if "text/plain" in request.headers.get("Accept", "") or request.query.get("format") == "text":
                text = "".join(_text(line) + "\n" for line in lines)
                return web.Response(text=text, content_type="text/plain", headers={"Cache-Control": "no-store"})
            body = "".join(json.dumps(line.as_dict(), separators=(",", ":")) + "\n" for line in lines)
            return web.Response(text=body, content_type="application/x-ndjson", headers={"Cache-Control": "no-store"})
        if self.open >= self.max_streams:
            return self._too_many()
        last = _last_id(request)

        async def pump(resp: web.StreamResponse) -> None:
            ring = journal.ring(path)
            if last is None:  # a new follower: the last n lines first
                backlog = ring.tail(n)
                cursor = backlog[0].seq - 1 if backlog else ring.last_seq
            else:
                cursor = last
            while True:
                ring = journal.ring(path)
                if ring.first_seq > cursor + 1:
                    await self._send(resp, _gap(ring.first_seq - cursor - 1))
                fresh = ring.after(cursor)
                if fresh:
                    cursor = fresh[-1].seq
                    await self._send(resp, "".join(_sse(line.seq, "line", line.as_dict()) for line in fresh))
                else:
                    cursor = max(cursor, ring.last_seq)
                    await self._wait(journal, resp, request)

        return await self._stream(request, pump)

    async def _stream(
        self, request: web.Request, pump: Callable[[web.StreamResponse], Awaitable[None]]
    ) -> web.StreamResponse:
        self.open += 1
        resp: web.StreamResponse | None = None
        try:
            resp = await self._start(request)
            await pump(resp)
        except (TimeoutError, ConnectionError):  # the client went away, or stopped reading
            if resp is not None:
                resp.force_close()
        finally:
            self.open -= 1
        assert resp is not None
        return resp

    async def _wait(self, journal: Journal, resp: web.StreamResponse, request: web.Request) -> None:
        """Until something is recorded; a comment line after KEEPALIVE seconds of silence. A client that went away
        is noticed within a second (ConnectionResetError ends the stream)."""
        waited = 0.0
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            try:
                async with asyncio.timeout(1.0):
                    await journal.changed()
                return
            except TimeoutError:
                waited += 1.0
                if waited >= KEEPALIVE:
                    await self._send(resp, ": keepalive\n\n")
                    return


def _sse(eid: int, event: str, data: dict[str, Any]) -> str:
    return f"id: {eid}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _gap(missed: int) -> str:
    return f"event: gap\ndata: {json.dumps({'missed': missed})}\n\n"


def _text(line: LogLine) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(line.at))
    pid = f"[{line.pid}]" if line.pid is not None else ""
    return f"{stamp} {line.stream}{pid} {line.text}"
