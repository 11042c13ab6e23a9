"""Core events as log lines: transitions and errors at the right levels, steady state quiet."""

from __future__ import annotations

from typing import Any

from ..core import (
    ChildExited,
    ChildStarted,
    ChildUnstopped,
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


def log_event(log: Any, ev: Event) -> None:
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
        case SpecWarning(message=message):
            log.warning("config warning", detail=message)
        case _:
            log.debug("event", event_type=type(ev).__name__, child=ev.path)


async def log_events(sub: Subscription, log: Any) -> None:
    """Drain a bus subscription into the log until cancelled."""
    async for ev in sub:
        log_event(log, ev)
