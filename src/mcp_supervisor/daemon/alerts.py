"""Alerts: the tree's events that need a person (a crash loop and its recovery, a supervisor that gave up, an OOM
kill, a refused reload...) sent to the ``[[daemon.alerts]]`` receivers — a webhook (JSON, Slack, Discord, ntfy) or a
command — each from its own bounded queue, so a slow or dead receiver never holds the tree or another receiver.

One alert per crash-loop episode: while a child is crash-looping its single exits and start failures are not sent
again; ``recovered`` ends the episode. Each receiver is rate limited (what is over the limit is counted and said in
the next alert that goes), retried with exponential backoff, and its state (sent, failed, dropped, last error) is in
``/status``, ``/alerts`` and the metrics. Webhook URLs and header values are secrets: never in logs or errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ..admin.journal import ReloadResult
from ..config.model import AlertConfig
from ..core import (
    ChildExited,
    CrashLoopEnded,
    CrashLoopStarted,
    Event,
    EventBus,
    IntensityExceeded,
    SingletonOverlap,
    SingletonStarted,
    SingletonUnheld,
    StartFailed,
    Subscription,
    describe,
    run_once,
)
from ..health.monitor import HealthTransition
from ..telemetry.metrics import AlertSample

QUEUE = 100  # alerts waiting per receiver; more are dropped (and counted)
BACKOFF_CAP = 60.0
FLUSH = 5.0  # seconds a stopping daemon gives its receivers to send what is queued
_SEVERITY = {"crash-loop": "critical", "gave-up": "critical", "oom-kill": "critical", "reload-failed": "warning",
             "start-failure": "warning", "health": "warning", "recovered": "info",
             "singleton-moved": "info", "singleton-unheld": "critical", "singleton-overlap": "critical"}  # fmt: skip
_NTFY_TAGS = {"critical": "rotating_light", "warning": "warning", "info": "white_check_mark"}
_NTFY_PRIORITY = {"critical": "5", "warning": "4", "info": "3"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """What a receiver is told: the event's name (one of ``ALERT_EVENTS``), the child's path ("" for the daemon),
    a title and a text a person reads, and the event's fields for programs."""

    event: str
    path: str
    title: str
    text: str
    at: float  # wall clock
    node: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return _SEVERITY.get(self.event, "warning")

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.event, "severity": self.severity, "path": self.path, "title": self.title,
                "text": self.text, "node": self.node, "at": _iso(self.at), "details": self.details}  # fmt: skip


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S UTC")


def _first_good(ev: HealthTransition) -> bool:
    """The first look found it well: nothing to tell."""
    return ev.previous == "unknown" and ev.current in ("healthy", "pass")


class Classifier:
    """Turns events into alerts, one per crash-loop episode: it remembers which paths are looping."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.looping: set[str] = set()

    def alert(self, ev: Event) -> Alert | None:
        """The alert ``ev`` makes, or None (not one that needs a person, or part of a crash loop already told)."""
        a = self._alert(ev)
        return None if a is None else Alert(event=a[0], path=ev.path, title=a[1], text=a[2], at=ev.at,
                                             node=self.node, details=a[3])  # fmt: skip

    def _alert(self, ev: Event) -> tuple[str, str, str, dict[str, Any]] | None:
        name = ev.path or "the daemon"
        if isinstance(ev, CrashLoopStarted):
            self.looping.add(ev.path)
            text = f"{ev.count} exits ({ev.cause}) since {_clock(ev.since)}; last line: {ev.line or '(none)'}"
            return ("crash-loop", f"{name} is crash-looping", text,
                    {"cause": ev.cause, "count": ev.count, "line": ev.line})  # fmt: skip
        if isinstance(ev, CrashLoopEnded):
            self.looping.discard(ev.path)
            text = f"stable again after {ev.count} exits ({ev.cause}) since {_clock(ev.since)}"
            return "recovered", f"{name} recovered", text, {"cause": ev.cause, "count": ev.count}
        if isinstance(ev, IntensityExceeded):
            text = (f"more than {ev.intensity} restarts in {ev.period:g} s: it stopped its children and gave up "
                    "(its own supervisor decides what follows)")  # fmt: skip
            return "gave-up", f"{name} gave up", text, {"intensity": ev.intensity, "period": ev.period}
        if isinstance(ev, StartFailed) and ev.path not in self.looping:
            event = "oom-kill" if ev.cause == "oom-kill" else "start-failure"
            return event, f"{name} failed to start", ev.reason.detail or ev.reason.kind, {"cause": ev.cause}
        if isinstance(ev, ChildExited) and ev.cause == "oom-kill" and ev.path not in self.looping:
            text = f"{ev.reason.detail} after {ev.uptime_s:.0f} s up (pid {ev.pid})"
            return "oom-kill", f"{name} was killed by the OOM killer", text, {"pid": ev.pid, "cause": ev.cause}
        if isinstance(ev, HealthTransition) and ev.previous != ev.current and not _first_good(ev):
            what = f"health check {ev.check}" if ev.check else "health"
            return ("health", f"{what}: {ev.previous} → {ev.current}", ev.output or ev.current,
                    {"check": ev.check, "previous": ev.previous, "current": ev.current})  # fmt: skip
        if isinstance(ev, SingletonStarted):
            return ("singleton-moved", f"{name} now runs on {ev.node}", f"fencing token {ev.token}",
                    {"node": ev.node, "token": ev.token})  # fmt: skip
        if isinstance(ev, SingletonUnheld):
            text = (f"no live node has held it for {ev.seconds:g} s (failover bound {ev.bound:g} s): "
                    "see `ctl cluster status` and every node's /readyz")  # fmt: skip
            return "singleton-unheld", f"{name} runs nowhere", text, {"seconds": ev.seconds, "bound": ev.bound}
        if isinstance(ev, SingletonOverlap):
            text = f"{len(ev.nodes)} nodes say they hold it: {', '.join(ev.nodes)}"
            return "singleton-overlap", f"{name} runs on more than one node", text, {"nodes": list(ev.nodes)}
        if isinstance(ev, ReloadResult) and not ev.ok:
            return "reload-failed", "reload failed", f"{ev.error} (the running configuration is kept)", {}
        return None


@dataclass(slots=True)
class _State:
    sent: int = 0
    failed: int = 0
    dropped: int = 0  # over the rate limit, or the queue was full
    last_ok: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    up: bool | None = None  # the last attempt's outcome; None: none yet


class Receiver:
    """One ``[[daemon.alerts]]`` entry: a bounded queue and the task that sends from it, one alert at a time."""

    def __init__(self, cfg: AlertConfig, redact: Callable[[str], str], log: Any) -> None:
        self.cfg = cfg
        self._redact = redact
        self._log = log
        self.state = _State()
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(QUEUE)
        self._sent_at: deque[float] = deque()
        self._unsaid = 0  # dropped since the last alert that went: said in the next one
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False

    def wants(self, alert: Alert) -> bool:
        if alert.event not in self.cfg.on:
            return False
        if not alert.path or not self.cfg.paths:  # the daemon's own alerts go wherever their event is wanted
            return True
        return any(fnmatch.fnmatchcase(alert.path, p) for p in self.cfg.paths)

    def offer(self, alert: Alert) -> None:
        """Queue ``alert`` unless the rate limit or the queue says no (then it is counted, and said later)."""
        now = time.monotonic()
        while self._sent_at and now - self._sent_at[0] > self.cfg.per:
            self._sent_at.popleft()
        if len(self._sent_at) >= self.cfg.rate or self._queue.full():
            self.state.dropped += 1
            self._unsaid += 1
            if self._unsaid == 1:  # once per run of drops: the next alert that goes says how many
                why = "its rate limit" if len(self._sent_at) >= self.cfg.rate else "its queue is full"
                self._log.warning("alerts dropped: " + why, alert=self.cfg.name, kind=alert.event, path=alert.path)
            return
        self._sent_at.append(now)
        self._queue.put_nowait(alert)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, flush: float) -> None:
        """Send what is queued within ``flush`` seconds, then stop (what is left is logged as lost)."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not self._queue.empty():
            self._log.error("alerts not sent: the daemon stopped", alert=self.cfg.name, count=self._queue.qsize())
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            alert = await self._queue.get()
            self._busy = True
            try:
                await self.deliver(alert)
            except Exception as e:  # noqa: BLE001 - a bug here must not end this receiver
                self._log.error("alert lost", alert=self.cfg.name, kind=alert.event, error=describe(e))
            finally:
                self._busy = False
                self._queue.task_done()

    async def deliver(self, alert: Alert) -> bool:
        """Send ``alert`` with retries; True once a receiver took it."""
        unsaid, self._unsaid = self._unsaid, 0
        delay = 1.0
        for attempt in range(self.cfg.retries + 1):
            error = await self.attempt(alert, unsaid)
            if error is None:
                self.state.sent += 1
                self.state.last_ok, self.state.up = time.time(), True
                return True
            self.state.up = False
            self.state.last_error, self.state.last_error_at = self._redact(error), time.time()
            final = attempt == self.cfg.retries or (error.startswith("HTTP 4") and not error.startswith("HTTP 429"))
            self._log.warning("alert not delivered", alert=self.cfg.name, kind=alert.event, path=alert.path,
                              attempt=attempt + 1, error=self.state.last_error, retry=not final)  # fmt: skip
            if final:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)
        self.state.failed += 1
        self._log.error("alert lost: its receiver did not take it", alert=self.cfg.name, kind=alert.event,
                        path=alert.path, error=self.state.last_error)  # fmt: skip
        return False

    async def attempt(self, alert: Alert, unsaid: int = 0) -> str | None:
        if self.cfg.exec:
            return await self._run_command(alert, unsaid)  # its timeout kills it and its group
        try:
            async with asyncio.timeout(self.cfg.timeout):
                return await self._post(alert, unsaid)
        except TimeoutError:
            return f"no answer within {self.cfg.timeout:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return describe(e)

    async def _post(self, alert: Alert, unsaid: int) -> str | None:
        assert self.cfg.webhook is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body, headers = render(self.cfg.format, alert, unsaid)
        headers.update(self.cfg.headers)
        async with self._session.post(self.cfg.webhook, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status} {resp.reason or ''}".strip()

    async def _run_command(self, alert: Alert, unsaid: int) -> str | None:
        doc = alert.as_dict() | ({"not_sent": unsaid} if unsaid else {})
        env = os.environ | {"MCP_ALERT_EVENT": alert.event, "MCP_ALERT_PATH": alert.path,
                            "MCP_ALERT_TITLE": alert.title, "MCP_ALERT_TEXT": alert.text,
                            "MCP_ALERT_SEVERITY": alert.severity, "MCP_ALERT_NODE": alert.node,
                            "MCP_ALERT_AT": _iso(alert.at), "MCP_ALERT_NOT_SENT": str(unsaid)}  # fmt: skip
        try:
            code, tail = await run_once(self.cfg.exec, f"alerts/{self.cfg.name}", json.dumps(doc).encode() + b"\n", env,
                                        self.cfg.timeout)  # fmt: skip
        except OSError as e:  # it cannot be started
            return describe(e)
        if code == 0:
            return None
        last = tail[-1] if tail else ""
        if code is None:
            how = f"ran past {self.cfg.timeout:g} s (killed)"
        else:
            how = f"exit code {code}" if code > 0 else f"killed by {signal.Signals(-code).name}"
        return f"{self.cfg.exec[0]}: {how}" + (f": {last[:200]}" if last else "")

    def sample(self) -> AlertSample:
        s = self.state
        return AlertSample(name=self.cfg.name, receiver=self.cfg.receiver(), sent=s.sent, failed=s.failed,
                           dropped=s.dropped, up=s.up, queued=self._queue.qsize() + self._busy)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        s = self.state
        return {"name": self.cfg.name, "receiver": self.cfg.receiver(), "on": list(self.cfg.on),
                "paths": list(self.cfg.paths), "format": None if self.cfg.exec else self.cfg.format,
                "sent": s.sent, "failed": s.failed, "dropped": s.dropped, "queued": self._queue.qsize() + self._busy,
                "up": s.up, "last_ok": s.last_ok, "last_error": s.last_error,
                "last_error_at": s.last_error_at}  # fmt: skip


def render(fmt: str, alert: Alert, unsaid: int = 0) -> tuple[bytes, dict[str, str]]:
    """A webhook's body and headers in ``fmt``: ``json`` (the alert), ``slack``, ``discord`` or ``ntfy``."""
    more = f"\n(+{unsaid} earlier alerts not sent: rate limit)" if unsaid else ""
    if fmt == "slack":
        return json.dumps({"text": f"*{alert.title}*\n{alert.text}{more}"}).encode(), _JSON
    if fmt == "discord":
        return json.dumps({"content": f"**{alert.title}**\n{alert.text}{more}"[:2000]}).encode(), _JSON
    if fmt == "ntfy":
        headers = {"Title": alert.title.encode("ascii", "replace").decode(), "Tags": _NTFY_TAGS[alert.severity],
                   "Priority": _NTFY_PRIORITY[alert.severity], "Content-Type": "text/plain; charset=utf-8"}  # fmt: skip
        return f"{alert.text}{more}".encode(), headers
    doc = alert.as_dict() | ({"not_sent": unsaid} if unsaid else {})
    return json.dumps(doc).encode(), _JSON


_JSON = {"Content-Type": "application/json"}


class Alerts:
    """Every receiver, fed from the tree's bus; :meth:`configure` follows a reload (a receiver whose entry did not
    change keeps its queue and its counts)."""

    def __init__(self, bus: EventBus, node: str, redact: Callable[[str], str], log: Any) -> None:
        self._bus = bus
        self._redact = redact
        self._log = log
        self.classifier = Classifier(node)
        self.receivers: dict[str, Receiver] = {}
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def configure(self, entries: Sequence[AlertConfig]) -> None:
        old, self.receivers = self.receivers, {}
        for cfg in entries:
            kept = old.pop(cfg.name, None)
            if kept is not None and kept.cfg == cfg:
                self.receivers[cfg.name] = kept
                continue
            if kept is not None:
                old[cfg.name] = kept
            rec = Receiver(cfg, self._redact, self._log)
            rec.start()
            self.receivers[cfg.name] = rec
        await asyncio.gather(*(r.stop(FLUSH) for r in old.values()))

    def start(self) -> None:
        """Listen from now on (call before the tree starts: a first start that fails is worth an alert too)."""
        self._sub = self._bus.subscribe(maxlen=10_000)
        self._task = asyncio.get_running_loop().create_task(self._pump(self._sub))

    async def _pump(self, sub: Subscription) -> None:
        async for ev in sub:
            try:
                alert = self.classifier.alert(ev)
            except Exception as e:  # noqa: BLE001 - one odd event never ends the alerts
                self._log.error("cannot make an alert of an event", event_type=type(ev).__name__, error=describe(e))
                continue
            if alert is None:
                continue
            for rec in self.receivers.values():
                if rec.wants(alert):
                    rec.offer(alert)

    async def stop(self) -> None:
        """Stop listening, then give every receiver :data:`FLUSH` seconds to send what it holds."""
        if self._sub is not None:
            self._sub.close()  # the pump reads what was already emitted (the tree's last words), then ends
        if self._task is not None:
            await self._task
        await asyncio.gather(*(r.stop(FLUSH) for r in self.receivers.values()))

    async def test(self, name: str) -> tuple[bool, str]:
        """Send a test alert to ``name`` now (no retries): whether it went, and the error if not."""
        rec = self.receivers.get(name)
        if rec is None:
            known = ", ".join(self.receivers) or "none configured"
            raise LookupError(f"no alert receiver named {name!r} (known: {known})")
        alert = Alert(event="test", path="", title="mcp-supervisor test alert",
                      text=f"a test alert from {self.classifier.node}: the receiver {name!r} works", at=time.time(),
                      node=self.classifier.node)  # fmt: skip
        error = await rec.attempt(alert)  # the same attempt, without the queue or the retries
        if error is None:
            rec.state.last_ok, rec.state.up = time.time(), True
            return True, ""
        rec.state.up, rec.state.last_error, rec.state.last_error_at = False, self._redact(error), time.time()
        return False, rec.state.last_error

    def samples(self) -> list[AlertSample]:
        return [r.sample() for r in self.receivers.values()]

    def as_dict(self) -> dict[str, Any]:
        return {"receivers": [r.as_dict() for r in self.receivers.values()],
                "crash_looping": sorted(self.classifier.looping)}  # fmt: skip
