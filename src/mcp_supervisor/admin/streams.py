"""``GET /events`` and ``GET /children/{path}/logs``: recent history as JSON lines, or followed live as Server-Sent
Events (``?follow=1`` or ``Accept: text/event-stream``).

A stream reads the daemon's :class:`~mcp_supervisor.admin.journal.Journal` and never holds up the writers: when it falls
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

from .journal import Journal, LogLine, LogRing, Resume, matches

MAX_STREAMS = 32
WRITE_TIMEOUT = 10.0
KEEPALIVE = 15.0  # a comment line this often: proxies keep the stream open, dead clients are noticed
DEFAULT_EVENTS = 100
DEFAULT_LINES = 100
MAX_LINES = 100_000

ErrorFn = Callable[..., web.Response]


def _int(request: web.Request, name: str, default: int, maximum: int) -> int:
    values = request.query.getall(name, [])
    if not values:
        return default
    if len(values) > 1:
        raise ValueError(f"query parameter {name!r} given more than once")
    raw = values[0]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or int(raw) > maximum:
        raise ValueError(f"query parameter {name!r} must be a whole number 0..{maximum}, got {raw[:20]!r}")
    return int(raw)


def _resume(request: web.Request, journal: Journal) -> Resume | None:
    """Where a reconnecting client left off: the ``Last-Event-ID`` header (which a browser sends on its own
    reconnect, so it wins), else ``?last_event_id=``."""
    header = request.headers.get("Last-Event-ID")
    values = request.query.getall("last_event_id", [])
    if header is None and len(values) > 1:
        raise ValueError("query parameter 'last_event_id' given more than once")
    given = header if header is not None else values[0] if values else None
    if given is None:
        return None
    try:
        return journal.resume(given.strip())
    except ValueError as e:
        raise ValueError(f"{'Last-Event-ID' if header is not None else 'last_event_id'}: {e}") from None


def wants_stream(request: web.Request, follow: bool | None) -> bool:
    if follow is not None:
        return follow
    return "text/event-stream" in request.headers.get("Accept", "")


class Streams:
    """The open streams of one admin port, and the two endpoints."""

    def __init__(self, journal: Callable[[], Journal | None], error: ErrorFn) -> None:
        self._journal = journal
        self._error = error
        self.open = 0
        self.max_streams = MAX_STREAMS
        self.write_timeout = WRITE_TIMEOUT
        self.closed_slow = 0  # streams closed because their reader stopped reading

    def _get_journal(self) -> Journal:
        journal = self._journal()
        if journal is None:
            raise web.HTTPServiceUnavailable(reason="the daemon keeps no journal")
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

    def _too_many(self, request: web.Request) -> web.Response:
        resp = self._error(request, 429, f"at most {self.max_streams} streams may be open at once; close one and retry")
        resp.headers["Retry-After"] = "5"
        return resp

    # -- /events -------------------------------------------------------------------------------------------------
    async def events(self, request: web.Request, follow: bool | None) -> web.StreamResponse:
        journal = self._get_journal()
        prefixes = request.query.getall("path", [])
        only, hidden = set(request.query.getall("type", [])), set(request.query.getall("exclude_type", []))

        def wanted(doc: dict[str, Any]) -> bool:
            kind = doc["type"]
            return (not only or kind in only) and kind not in hidden and (not prefixes or matches(doc, prefixes))

        resume = _resume(request, journal)
        n = _int(request, "limit", DEFAULT_EVENTS, journal.capacity)  # checked whether or not it applies
        if not wants_stream(request, follow):
            missed, docs = journal.events_after(resume.after if resume is not None else 0)
            docs = [d for d in docs if wanted(d)]
            docs = docs[:n] if resume is not None else docs[len(docs) - n :] if n else []
            body = "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in docs)
            headers = {"Cache-Control": "no-store", "X-Missed-Events": str(missed)}
            return web.Response(text=body, content_type="application/x-ndjson", headers=headers)
        if self.open >= self.max_streams:
            return self._too_many(request)
        cursor = resume.after if resume is not None else journal.last_id

        async def pump(resp: web.StreamResponse) -> None:
            nonlocal cursor
            if resume is not None and resume.restarted:
                await self._send(resp, _gap(0, restarted=True))
            while True:
                missed, entries = journal.entries_after(cursor, limit=1000)
                if missed:
                    await self._send(resp, _gap(missed))
                if not entries:
                    cursor = max(cursor, journal.last_id) if missed else cursor
                    await self._wait(journal, resp, request)
                    continue
                cursor = entries[-1].id
                filtered = prefixes or only or hidden
                out = "".join(e.sse for e in entries if not filtered or wanted(e.doc))
                if out:
                    await self._send(resp, out)

        return await self._stream(request, pump)

    # -- /children/{path}/logs -----------------------------------------------------------------------------------
    async def logs(  # noqa: C901 - one stream's life: filters, catch-up, follow, gaps, each a branch of the protocol
        self, request: web.Request, path: str, unknown: str | None, follow: bool | None, subtree: bool = False
    ) -> web.StreamResponse:
        """One child's lines; ``subtree`` (a supervisor's path): the lines of every child below it, merged in the
        order they were written, each with its ``path``. ``unknown``: why there is no such child now (its output may
        still be kept: it was removed by a reload, say)."""
        journal = self._get_journal()

        def rings() -> list[LogRing]:
            if subtree:
                return journal.rings_under(path)
            ring = journal.rings.get(path)
            return [ring] if ring is not None else []

        if not rings() and unknown is not None:
            return self._error(request, 404, f"{unknown}, and no output is kept for it")
        n = _int(request, "lines", DEFAULT_LINES, MAX_LINES)
        fmt = request.query.getall("format", [])
        if len(fmt) > 1 or (fmt and fmt[0] not in ("json", "text")):
            raise ValueError(f"query parameter 'format' must be json or text, got {fmt[-1][:20]!r}")
        resume = _resume(request, journal)
        if not wants_stream(request, follow):
            lines = _merged_tail(rings(), n)
            if resume is not None:  # what followed that line (all of it when the daemon restarted since)
                after = sorted((x for ring in rings() for x in ring.after(resume.after)), key=lambda x: x.seq)
                lines = after[:n]
            if "text/plain" in request.headers.get("Accept", "") or fmt == ["text"]:
                text = "".join(_text(line, subtree) + "\n" for line in lines)
                return web.Response(text=text, content_type="text/plain", headers={"Cache-Control": "no-store"})
            body = "".join(json.dumps(line.as_dict(), separators=(",", ":")) + "\n" for line in lines)
            return web.Response(text=body, content_type="application/x-ndjson", headers={"Cache-Control": "no-store"})
        if self.open >= self.max_streams:
            return self._too_many(request)
        boot = journal.boot

        async def pump(resp: web.StreamResponse) -> None:
            if resume is None:  # a new follower: the last n lines first
                backlog = _merged_tail(rings(), n)
                cursor = backlog[0].seq - 1 if backlog else max((r.last_seq for r in rings()), default=0)
            else:
                cursor = resume.after
                if resume.restarted:
                    await self._send(resp, _gap(0, restarted=True))
            while True:
                current = rings()
                missed = sum(ring.missed_after(cursor) for ring in current)
                if missed:
                    await self._send(resp, _gap(missed))
                fresh = sorted((line for ring in current for line in ring.after(cursor)), key=lambda x: x.seq)
                if fresh:
                    cursor = fresh[-1].seq
                    out = "".join(_sse(f"{boot}-{line.seq}", "line", line.as_dict()) for line in fresh)
                    await self._send(resp, out)
                else:
                    cursor = max([cursor, *(ring.last_seq for ring in current)])
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


def _sse(eid: str, event: str, data: dict[str, Any]) -> str:
    return f"id: {eid}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _gap(missed: int, restarted: bool = False) -> str:
    """``missed`` events or lines were lost; ``restarted``: the daemon restarted since the reader's id, and what the
    earlier incarnation had is gone (this one's backlog follows)."""
    return f"event: gap\ndata: {json.dumps({'missed': missed, 'restarted': restarted})}\n\n"


def _merged_tail(rings: list[LogRing], n: int) -> list[LogLine]:
    if len(rings) == 1:
        return rings[0].tail(n)
    lines = sorted((line for ring in rings for line in ring.tail(n)), key=lambda x: x.seq)
    return lines[-n:] if n > 0 else []


def _text(line: LogLine, with_path: bool = False) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(line.at))
    pid = f"[{line.pid}]" if line.pid is not None else ""
    return f"{stamp} {line.path + ' ' if with_path else ''}{line.stream}{pid} {line.text}"
