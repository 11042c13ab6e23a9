"""Why a child ended: a record of every incarnation, its cause, and crash loops named as such.

Every incarnation of a child ends in an :class:`ExitRecord` — when it started, became ready (or never), ended, how
(exit code; a signal by name and whether it dumped core; the supervisor's own reason), its peak resident memory and
CPU seconds, and the last lines it wrote — kept in a bounded history per child that survives restarts. Its
:class:`Cause` is one of a small set, decided by :func:`classify` (a pure function, table-tested):

========== ===================================================================================================
cause      meaning
========== ===================================================================================================
stopped    the supervisor stopped it (an operator, a reload, the tree's stop, a sibling's restart)
start-failure it never became ready (it exited, failed, or did not answer within its start timeout)
oom-kill   the kernel's OOM killer: its memory cgroup counted an ``oom_kill`` while it died of SIGKILL (certain
           when the cgroup is its own, likely when it shares one), or — without that evidence — a SIGKILL nobody
           here sent while its resident memory was within 10 % of a known limit (possible)
limit      the daemon ended it for ``max_memory``, or a resource limit's signal (SIGXCPU, SIGXFSZ)
liveness   the daemon ended it: its liveness check failed
killed     a signal someone else sent (``kill -TERM`` from a shell, SIGKILL without OOM evidence)
crash      it failed after it was ready: a non-zero exit, an exception, a fault (SIGSEGV, SIGABRT, ...)
exited     it ended normally (exit code 0, or returned) after it was ready
========== ===================================================================================================

A child that ends with the same cause and a similar last output line (digits and hex ignored)
:data:`LOOP_COUNT` times within its supervisor's intensity period is *crash-looping*
(:class:`CrashLoops`); the episode ends once an incarnation stays up for that period, and at least
:data:`MIN_STABLE` seconds.
"""

from __future__ import annotations

import enum
import re
import signal
from collections import deque
from dataclasses import dataclass
from typing import Any

from .events import ExitReason

HISTORY = 20  # exit records kept per child
TAIL_LINES = 10  # output lines kept with each record
LOOP_COUNT = 3  # similar failures within the intensity period that make a crash loop
MIN_STABLE = 5.0  # seconds an incarnation must stay up to end an episode, at the least
NEAR_LIMIT = 0.9  # peak resident memory at this share of a limit counts as "near" it


class Cause(enum.StrEnum):
    STOPPED = "stopped"
    START_FAILURE = "start-failure"
    OOM_KILL = "oom-kill"
    LIMIT = "limit"
    LIVENESS = "liveness"
    KILLED = "killed"
    CRASH = "crash"
    EXITED = "exited"


class Certainty(enum.StrEnum):
    CERTAIN = "certain"
    LIKELY = "likely"
    POSSIBLE = "possible"


FAULTS = frozenset(s.name for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT,
                                    signal.SIGSYS, signal.SIGTRAP))  # fmt: skip
"""Signals a program's own fault raises: its death by one is a crash, not a kill."""
LIMIT_SIGNALS = frozenset({signal.SIGXCPU.name, signal.SIGXFSZ.name})


@dataclass(frozen=True, slots=True)
class OomEvidence:
    """What the memory cgroup and the samples say about an incarnation."""

    kills: int = 0  # ``oom_kill`` events its memory cgroup counted while it lived
    own_cgroup: bool = False  # that cgroup holds only this child
    near_limit: bool = False  # its peak resident memory came within NEAR_LIMIT of a known limit


def classify(ready: bool, reason: ExitReason, oom: OomEvidence | None = None) -> tuple[Cause, Certainty | None]:
    """The cause of one incarnation's end, and how sure it is (only an OOM kill can be uncertain)."""
    if reason.kind == "shutdown":
        return Cause.STOPPED, None
    if reason.ended_by == "max_memory":
        return Cause.LIMIT, Certainty.CERTAIN
    if reason.ended_by == "liveness":
        return Cause.LIVENESS, Certainty.CERTAIN
    if reason.signal == signal.SIGKILL.name and oom is not None:
        if oom.kills > 0:
            return Cause.OOM_KILL, Certainty.CERTAIN if oom.own_cgroup else Certainty.LIKELY
        if oom.near_limit:
            return Cause.OOM_KILL, Certainty.POSSIBLE
    if reason.signal in LIMIT_SIGNALS:
        return Cause.LIMIT, Certainty.CERTAIN
    if not ready:
        return Cause.START_FAILURE, None
    if reason.kind == "normal":
        return Cause.EXITED, None
    if reason.signal is not None and reason.signal not in FAULTS:
        return Cause.KILLED, None
    return Cause.CRASH, None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitRecord:
    """One incarnation, from start to end (wall-clock times)."""

    pid: int | None
    started_at: float
    ready_at: float | None
    ended_at: float
    reason: ExitReason
    cause: Cause
    certainty: Certainty | None = None
    peak_rss_bytes: int | None = None
    cpu_s: float | None = None
    last_lines: tuple[str, ...] = ()

    @property
    def runtime_s(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    def as_dict(self) -> dict[str, Any]:
        r = self.reason
        return {
            "pid": self.pid, "started_at": round(self.started_at, 3),
            "ready_at": round(self.ready_at, 3) if self.ready_at is not None else None,
            "ended_at": round(self.ended_at, 3), "runtime_s": round(self.runtime_s, 3),
            "reason": r.kind, "detail": r.detail, "exit_code": r.code, "signal": r.signal,
            "core_dumped": r.core_dumped, "ended_by": r.ended_by, "cause": str(self.cause),
            "certainty": str(self.certainty) if self.certainty is not None else None,
            "peak_rss_bytes": self.peak_rss_bytes,
            "cpu_s": round(self.cpu_s, 3) if self.cpu_s is not None else None,
            "last_lines": list(self.last_lines),
        }  # fmt: skip


_VARYING = re.compile(r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8,}|\d+")


def line_key(line: str) -> str:
    """A last output line with what varies between runs (numbers, ids, addresses, times) taken out."""
    return " ".join(_VARYING.sub("#", line).split())[:200]


@dataclass(frozen=True, slots=True)
class Episode:
    """A crash loop: since when, how many similar failures so far, their cause and a representative line."""

    since: float
    count: int
    cause: Cause
    line: str

    def as_dict(self) -> dict[str, Any]:
        return {"since": round(self.since, 3), "count": self.count, "cause": str(self.cause), "line": self.line}


class CrashLoops:
    """One child's crash-loop detector: told of each end and of each incarnation that stayed up."""

    __slots__ = ("episode", "_recent")

    def __init__(self) -> None:
        self.episode: Episode | None = None
        self._recent: deque[tuple[float, Cause, str]] = deque(maxlen=LOOP_COUNT * 4)

    def ended(self, record: ExitRecord, period: float) -> Episode | None:
        """Count this end; the new episode when it makes one (None: none began, or one is going on)."""
        if record.cause is Cause.STOPPED:
            return None
        line = record.last_lines[-1] if record.last_lines else ""
        key = line_key(line)
        now = record.ended_at
        self._recent.append((now, record.cause, key))
        if self.episode is not None:
            if record.cause is self.episode.cause:
                self.episode = Episode(self.episode.since, self.episode.count + 1, self.episode.cause,
                                       self.episode.line)  # fmt: skip
            return None
        similar = [at for at, cause, k in self._recent if cause is record.cause and k == key and now - at <= period]
        if len(similar) < LOOP_COUNT:
            return None
        self.episode = Episode(min(similar), len(similar), record.cause, line)
        return self.episode

    def stayed_up(self) -> Episode | None:
        """An incarnation stayed up long enough: the episode that ends (None if there was none)."""
        ended, self.episode = self.episode, None
        self._recent.clear()
        return ended


def stable_after(period: float) -> float:
    """How long an incarnation must stay up to end a crash-loop episode."""
    return max(period, MIN_STABLE)


def history() -> deque[ExitRecord]:
    return deque(maxlen=HISTORY)


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _ago(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def diagnose(records: list[ExitRecord], episode: Episode | None, max_memory: int | None, now: float) -> str:
    """One line for a person: what keeps happening to this child, with the figures that matter."""
    failures = [r for r in records if r.cause not in (Cause.STOPPED, Cause.EXITED)]
    if not failures:
        return "no failures recorded" + (f" ({len(records)} stops or normal exits)" if records else "")
    last = failures[-1]
    same = [r for r in failures if r.cause is last.cause]
    span = now - same[0].ended_at
    parts = [f"{last.cause} {len(same)} time{'s' if len(same) != 1 else ''} in {_ago(max(span, 1.0))}"]
    if episode is not None:
        parts[0] = f"crash-looping ({episode.count} similar failures): " + parts[0]
    if last.cause is Cause.OOM_KILL:
        peak = max((r.peak_rss_bytes or 0) for r in same)
        if peak:
            parts.append(f"peak RSS {_mib(peak)}")
        parts.append("max_memory is not set" if max_memory is None else f"max_memory is {_mib(max_memory)}")
        if last.certainty is Certainty.LIKELY:
            parts.append("likely: its memory cgroup, shared with others, counted an OOM kill")
        elif last.certainty is Certainty.POSSIBLE:
            parts.append("possible: a SIGKILL nobody here sent, near its memory limit (no OOM count to confirm)")
    elif last.cause in (Cause.LIMIT, Cause.LIVENESS, Cause.KILLED, Cause.START_FAILURE):
        parts.append(last.reason.detail or str(last.reason))
    else:
        parts.append(last.reason.detail or "returned an error")
        if last.reason.core_dumped:
            parts.append("core dumped")
    if last.last_lines:
        parts.append(f"last line: {last.last_lines[-1][:200]}")
    return "; ".join(parts)
