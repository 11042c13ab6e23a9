"""Core events as log lines: transitions and errors at the right levels, steady state quiet.

A crash-looping child would write two or three lines per restart, hundreds a second in a storm: each child gets at
most ``burst`` transition lines (started, exited, failed to start, restart scheduled) per ``window`` seconds, and
one summary line per window for what was held back. Its output lines, and the tree's own verdicts (intensity
exceeded, supervisor stopped), are never held back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..core import (
    ChildExited,
    ChildStarted,
    ChildUnstopped,
    EscapeeKilled,
    Event,
    IntensityExceeded,
    ProcessOutput,
    RestartScheduled,
    ShutdownTimeout,
    SpecWarning,
    StartFailed,
    Subscription,
    SupervisorStopped,
)


def log_event(log: Any, ev: Event) -> None:  # noqa: C901, PLR0912 - one log line per event type
    match ev:
        case ProcessOutput(path=path, stream=stream, line=line, pid=pid):
            log.info("output", child=path, stream=stream, pid=pid, line=line)
        case ChildStarted(path=path, kind=kind, pid=pid, restarts=restarts):
            log.info("child started", child=path, kind=kind, pid=pid, restarts=restarts)
        case ChildExited(path=path, kind=kind, reason=reason, pid=pid, uptime_s=uptime):
            level = log.warning if reason.kind == "abnormal" else log.info
            level("child exited", child=path, kind=kind, reason=reason.kind, detail=reason.detail, pid=pid,
                  uptime_s=round(uptime, 3))  # fmt: skip
        case StartFailed(path=path, reason=reason):
            log.error("child failed to start", child=path, reason=reason.kind, detail=reason.detail)
        case RestartScheduled(path=path, delay_s=delay, attempt=attempt):
            if delay > 0:
                log.info("restart scheduled", child=path, delay_s=round(delay, 3), attempt=attempt)
        case IntensityExceeded(path=path, intensity=intensity, period=period):
            log.error("restart intensity exceeded; supervisor gives up", supervisor=path or "/",
                      intensity=intensity, period_s=period)  # fmt: skip
        case SupervisorStopped(path=path, reason=reason):
            log.warning("supervisor stopped", supervisor=path or "/", reason=reason.kind, detail=reason.detail)
        case ShutdownTimeout(path=path, timeout_s=t):
            log.warning("child did not stop in time; forcing", child=path, shutdown_s=t)
        case ChildUnstopped(path=path, timeout_s=t):
            log.error("in-process child still running after its shutdown time", child=path, shutdown_s=t)
        case EscapeeKilled(path=path, pid=pid):
            log.warning("killed a descendant that outlived its child", child=path or "(unknown)", pid=pid)
        case SpecWarning(message=message):
            log.warning("config warning", detail=message)
        case _:
            log.debug("event", event_type=type(ev).__name__, child=ev.path)


_TRANSITIONS = (ChildStarted, ChildExited, StartFailed, RestartScheduled)


class Quieter:
    """Per child, at most ``burst`` transition lines per ``window`` seconds; the rest are counted for a summary."""

    def __init__(self, burst: int = 20, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window = window
        self._clock = clock
        self._windows: dict[str, list[float]] = {}  # path -> [window start, lines written, lines held back]
        self._ended: list[tuple[str, int]] = []

    def allow(self, path: str) -> bool:
        now = self._clock()
        w = self._windows.get(path)
        if w is None or now - w[0] >= self.window:
            if w is not None and w[2]:
                self._ended.append((path, int(w[2])))
            self._windows[path] = [now, 1.0, 0.0]
            return True
        if w[1] < self.burst:
            w[1] += 1
            return True
        w[2] += 1
        return False

    def due(self) -> list[tuple[str, int]]:
        """(path, lines held back) for every window that has ended with lines held back."""
        now = self._clock()
        out, self._ended = self._ended, []
        for path, w in list(self._windows.items()):
            if now - w[0] >= self.window:
                if w[2]:
                    out.append((path, int(w[2])))
                del self._windows[path]
        return out


async def log_events(sub: Subscription, log: Any, quieter: Quieter | None = None) -> None:
    """Drain a bus subscription into the log until cancelled, holding back crash loops' repeated lines."""
    q = quieter if quieter is not None else Quieter()
    loop = asyncio.get_running_loop()
    ticker: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal ticker
        for path, held in q.due():
            log.warning("child is crash-looping; lines held back", child=path, held_back=held, window_s=q.window)
        ticker = loop.call_later(q.window, tick)

    ticker = loop.call_later(q.window, tick)
    try:
        async for ev in sub:
            if isinstance(ev, _TRANSITIONS) and not q.allow(ev.path):
                continue
            log_event(log, ev)
    finally:
        ticker.cancel()
