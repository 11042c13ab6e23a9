"""What the admin port streams: recent events, numbered, and each child's recent output, bounded.

- **Events.** Every event of the tree's bus is numbered (``id``) and kept, as a JSON-ready dict, in a ring of
  ``capacity`` entries. A reader asks for what follows the last id it saw; when the ring no longer holds all of
  that, it learns how many it missed (a *gap*) and gets the rest.
- **Output.** Each child has a ring of its last lines — OS processes' stdout and stderr, and in-process workers' own
  log lines — bounded by lines and by bytes (``log_lines``, ``log_bytes`` in the child's config). It is keyed by the
  child's path, so it outlives restarts: after a crash the previous run's last lines are still there, each marked
  with the pid that wrote it.
- **Numbers.** Events are numbered in one sequence and output lines in another, both journal-wide (a line's number
  orders it among every child's lines, so the output of a whole subtree can be merged and followed with one
  cursor). Ids given to readers carry the daemon's incarnation (``boot``): ``"<boot>-<number>"``. A reader that
  resumes with an id of another incarnation (the daemon restarted) gets this one's whole backlog, after a gap that
  says so — never silence because the new numbers look "older".
- **Waiting.** Readers wait on one broadcast future per journal, never on the writers: recording is a few appends
  and never awaits, so a stalled reader cannot slow the tree; it falls behind and gets a gap. Readers are woken at
  most every ``COALESCE`` seconds (50 ms), so a storm of events costs each reader one write per wake, not one per
  event.

Standard library and the core only. Every text is redacted (by the function the daemon passes in) before it is
kept, so nothing a reader gets can hold a secret.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from ..core import Event, EventBus, ExitReason, ProcessOutput, Subscription

DEFAULT_EVENTS = 10_000
DEFAULT_LOG_LINES = 1_000
DEFAULT_LOG_BYTES = 256 * 1024
COALESCE = 0.05  # seconds: readers are woken at most this often


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult(Event):
    """A reload was applied (``ok``, with the changes) or refused (the config error); the tree is unchanged then."""

    ok: bool
    changes: tuple[tuple[str, str], ...] = ()
    error: str = ""


def event_dict(ev: Event) -> dict[str, Any]:
    """An event as JSON-ready data: ``type`` and its fields (exit reasons as ``{kind, detail}``)."""
    out: dict[str, Any] = {"type": type(ev).__name__}
    for f in fields(ev):
        out[f.name] = _plain(getattr(ev, f.name))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, ExitReason):
        return {"kind": value.kind, "detail": value.detail}
    if isinstance(value, enum.Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


@dataclass(frozen=True, slots=True)
class LogLine:
    seq: int  # journal-wide, increasing: a follower asks for what comes after the last one it saw
    at: float
    stream: str  # "stdout", "stderr", or a log level for an in-process worker's own lines
    pid: int | None
    text: str
    path: str = ""  # the child that wrote it

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "stream": self.stream, "pid": self.pid, "text": self.text,
                "path": self.path}  # fmt: skip


DROPS_KEPT = 4096  # numbers of dropped lines remembered per ring: a gap's count is exact up to this many


class LogRing:
    """One child's last lines, bounded by count and by bytes (the oldest go first). ``counter`` numbers the lines
    (the journal passes its own, shared by every ring)."""

    __slots__ = ("_counter", "_drops", "_last", "_lines", "bytes", "dropped", "max_bytes", "max_lines", "path")

    def __init__(
        self,
        max_lines: int = DEFAULT_LOG_LINES,
        max_bytes: int = DEFAULT_LOG_BYTES,
        *,
        path: str = "",
        counter: Iterator[int] | None = None,
    ) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.path = path
        self._counter = counter if counter is not None else itertools.count(1)
        self._lines: deque[LogLine] = deque()
        self._drops: deque[int] = deque(maxlen=DROPS_KEPT)  # numbers of the last lines pushed out
        self._last = 0
        self.bytes = 0
        self.dropped = 0  # lines pushed out by the bounds

    def __len__(self) -> int:
        return len(self._lines)

    def append(self, stream: str, pid: int | None, text: str, at: float | None = None) -> LogLine:
        self._last = next(self._counter)
        line = LogLine(self._last, time.time() if at is None else at, stream, pid, text, self.path)
        self._lines.append(line)
        self.bytes += len(text) + 1
        self._trim()
        return line

    def resize(self, max_lines: int, max_bytes: int) -> None:
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self._trim()

    def _trim(self) -> None:
        lines = self._lines
        while lines and (len(lines) > self.max_lines or self.bytes > self.max_bytes):
            gone = lines.popleft()
            self.bytes -= len(gone.text) + 1
            self.dropped += 1
            self._drops.append(gone.seq)

    @property
    def last_seq(self) -> int:
        """The newest line's number, kept or not (0 before the first)."""
        return self._last

    def missed_after(self, seq: int) -> int:
        """How many lines numbered above ``seq`` were pushed out before anyone read them."""
        n = 0
        for dropped in reversed(self._drops):
            if dropped <= seq:
                break
            n += 1
        return n

    def tail(self, n: int) -> list[LogLine]:
        if n <= 0:
            return []
        lines = self._lines
        return list(lines)[-n:] if n < len(lines) else list(lines)

    def after(self, seq: int) -> list[LogLine]:
        """Lines newer than ``seq`` (all of them that are still kept), walking back from the newest."""
        out: list[LogLine] = []
        for line in reversed(self._lines):
            if line.seq <= seq:
                break
            out.append(line)
        out.reverse()
        return out


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a reader left off, in this incarnation's numbering."""

    after: int  # the last number it saw
    restarted: bool = False  # its id came from an earlier incarnation of the daemon: it missed an unknown amount


Limits = Callable[[str], tuple[int, int]]


class Entry:
    """One numbered event. Its JSON form is built (and redacted) the first time a reader asks, then kept: with no
    reader an event costs an append; with 32 readers it is serialised once, not 32 times."""

    __slots__ = ("_boot", "_doc", "_redact", "_sse", "event", "id")

    def __init__(self, eid: int, event: Event, redact: Callable[[Any], Any], boot: str = "") -> None:
        self.id = eid
        self.event = event
        self._redact = redact
        self._boot = boot
        self._doc: dict[str, Any] | None = None
        self._sse: str | None = None

    @property
    def doc(self) -> dict[str, Any]:
        doc = self._doc
        if doc is None:
            doc = self._doc = self._redact(event_dict(self.event))
            doc["id"] = f"{self._boot}-{self.id}"
        return doc

    @property
    def sse(self) -> str:
        """The Server-Sent Event: ``id``, ``event`` (the type) and ``data`` (the JSON document)."""
        text = self._sse
        if text is None:
            doc = self.doc
            data = json.dumps(doc, separators=(",", ":"))
            text = self._sse = f"id: {doc['id']}\nevent: {type(self.event).__name__}\ndata: {data}\n\n"
        return text


class Journal:
    """The event ring and the output rings of one daemon (see the module docstring)."""

    def __init__(
        self,
        capacity: int = DEFAULT_EVENTS,
        *,
        redact: Callable[[Any], Any] = lambda v: v,
        limits: Limits = lambda path: (DEFAULT_LOG_LINES, DEFAULT_LOG_BYTES),
        boot: str | None = None,
    ) -> None:
        self.boot = boot if boot is not None else secrets.token_hex(4)
        """This incarnation's mark in every id given out (a new one at every start of the daemon)."""
        self.capacity = capacity
        self._lines = itertools.count(1)
        self._events: deque[Entry] = deque(maxlen=capacity)
        self._next_id = 1
        self._redact = redact
        self.limits = limits
        self.rings: dict[str, LogRing] = {}
        self._changed: asyncio.Future[None] | None = None
        self._wake_handle: asyncio.TimerHandle | None = None
        self.coalesce = COALESCE
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.missed = 0  # events the bus dropped before the journal could number them
        self._sub: Subscription | None = None

    # -- recording (never awaits) ------------------------------------------------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop whose readers are woken (records from other threads are handed over to it)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def record(self, ev: Event) -> int:
        """Number ``ev`` and keep it; an OS child's output line also goes into that child's ring (redacted)."""
        eid = self._next_id
        self._next_id += 1
        self._events.append(Entry(eid, ev, self._redact, self.boot))
        if isinstance(ev, ProcessOutput):
            self.ring(ev.path).append(ev.stream, ev.pid, self._redact(ev.line), ev.at)
        self._notify()
        return eid

    def log_line(self, path: str, level: str, text: str, pid: int | None = None) -> None:
        """An in-process worker's own log line (already redacted by the logging chain). Any thread."""
        if threading.get_ident() == self._loop_thread or self._loop is None:
            self.ring(path).append(level, pid, text)
            self._notify()
        else:
            at = time.time()
            self._loop.call_soon_threadsafe(self._append_later, path, level, text, pid, at)

    def _append_later(self, path: str, level: str, text: str, pid: int | None, at: float) -> None:
        self.ring(path).append(level, pid, text, at)
        self._notify()

    def ring(self, path: str) -> LogRing:
        ring = self.rings.get(path)
        if ring is None:
            ring = self.rings[path] = LogRing(*self.limits(path), path=path, counter=self._lines)
        return ring

    def rings_under(self, path: str) -> list[LogRing]:
        """The rings of ``path`` and of every child below it."""
        prefix = path + "/"
        return [ring for p, ring in self.rings.items() if p == path or p.startswith(prefix)]

    def resume(self, given: str) -> Resume:
        """Parse an id a reader saw (``"<boot>-<n>"``, or a bare number of this incarnation); ValueError if it is
        neither."""
        boot, sep, number = given.rpartition("-")
        if not (number.isascii() and number.isdigit()) or len(number) > 12 or (sep and not boot):
            raise ValueError(f"an event id is <boot>-<number> or a number, got {given[:40]!r}")
        if sep and boot != self.boot:
            return Resume(0, restarted=True)
        return Resume(int(number))

    def resize(self, limits: Limits) -> None:
        """New bounds (after a reload): every ring takes its child's new limits."""
        self.limits = limits
        for path, ring in self.rings.items():
            ring.resize(*limits(path))

    def _notify(self) -> None:
        """Wake the readers — at most once per ``coalesce`` seconds: under a storm each reader then writes what
        accumulated in one go, instead of waking (and writing) once per event."""
        if self._changed is None or self._wake_handle is not None:
            return
        loop = self._loop or asyncio.get_running_loop()
        self._wake_handle = loop.call_later(self.coalesce, self._wake)

    def _wake(self) -> None:
        self._wake_handle = None
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- reading -----------------------------------------------------------------------------------------------
    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def entries_after(self, last_id: int, limit: int | None = None) -> tuple[int, list[Entry]]:
        """(how many were missed, the entries with an id above ``last_id`` that are still kept, oldest first).

        Walks back from the newest: a reader that keeps up costs what it reads, not the ring's size."""
        events = self._events
        if not events or last_id >= events[-1].id:
            return 0, []
        missed = max(0, events[0].id - last_id - 1)
        out: list[Entry] = []
        for entry in reversed(events):
            if entry.id <= last_id:
                break
            out.append(entry)
        out.reverse()
        return missed, out[:limit] if limit is not None else out

    def events_after(self, last_id: int, limit: int | None = None) -> tuple[int, list[dict[str, Any]]]:
        """As :meth:`entries_after`, as JSON-ready documents."""
        missed, entries = self.entries_after(last_id, limit)
        return missed, [e.doc for e in entries]

    async def changed(self) -> None:
        """Wait until something is recorded (an event or a line)."""
        fut = self._changed
        if fut is None or fut.done():
            fut = self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(fut)  # one reader giving up (a timeout) must not cancel the others' wake-up

    def pump(self, bus: EventBus, maxlen: int = 100_000) -> Coroutine[Any, Any, None]:
        """Subscribe to ``bus`` now (so nothing emitted from here on is missed) and return the coroutine that
        records its events until cancelled. Call it from the loop the readers run on."""
        self.bind(asyncio.get_running_loop())
        sub: Subscription = bus.subscribe(maxlen=maxlen)
        self._sub = sub
        return self._drain(sub)

    def catch_up(self) -> None:
        """Record, now, what the bus emitted and the pump has not taken yet."""
        sub = self._sub
        while sub is not None and (ev := sub.get_nowait()) is not None:
            self.record(ev)

    async def _drain(self, sub: Subscription) -> None:
        try:
            async for ev in sub:
                self.record(ev)
                self.missed = sub.dropped
        finally:
            sub.close()


def matches(doc: dict[str, Any], prefixes: Iterable[str]) -> bool:
    """True when the event's path is one of ``prefixes`` or below one (all events when there are none)."""
    wanted = [p.strip("/") for p in prefixes]
    if not wanted:
        return True
    path = str(doc.get("path", ""))
    return any(path == p or path.startswith(p + "/") for p in wanted)
