"""Who blocked the event loop. In-process workers share the daemon's loop: one that calls something synchronous (a
blocking client, a CPU-bound loop, a C extension holding the GIL) freezes restarts, health checks and the admin
port with it. A watchdog thread notices when the loop has not turned for longer than a threshold, samples the
main thread's stack (``sys._current_frames()``), attributes it to the child whose task was running — by the task's
name (a child's task is named with its path), else by a ``ChildContext`` found in the stack's frames — and, once the
loop turns again, emits a :class:`LoopBlocked` event with how long it lasted and the innermost frames.

The loop's lateness is also kept as a histogram (every beat: how late it fired), for the metrics.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from .events import Event, EventBus

BEAT = 0.05  # seconds between the loop's beats
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FRAMES = 6  # innermost frames kept
_STDLIB = os.path.dirname(os.__file__)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopBlocked(Event):
    """The event loop did not turn for ``duration_s``; ``path`` is the child whose code held it ("" when it cannot
    be told: the daemon's own code, or a task nobody named), ``task`` the running task's name, ``frames`` its
    innermost frames (``file:line in function``), innermost last."""

    duration_s: float
    task: str
    frames: tuple[str, ...]


@dataclass(slots=True)
class Blocked:
    """One child's record: how often and how long it blocked the loop, and where the last time."""

    count: int = 0
    total_s: float = 0.0
    last_at: float = 0.0  # wall clock
    last_s: float = 0.0
    frames: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "total_s": round(self.total_s, 3), "last_at": self.last_at,
                "last_s": round(self.last_s, 3), "frames": list(self.frames)}  # fmt: skip


@dataclass(slots=True)
class _Episode:
    since: float  # monotonic: the last beat before it
    path: str
    task: str
    frames: tuple[str, ...]


@dataclass(slots=True)
class LoopWatch:
    """Started on the loop it watches; :meth:`stop` ends the thread. ``paths``: whether a name is a child's path."""

    bus: EventBus
    is_path: Callable[[str], bool]
    threshold: float = 0.25
    by_path: dict[str, Blocked] = field(default_factory=dict)
    lag_counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    lag_sum: float = 0.0
    _beat: float = 0.0
    _loop: asyncio.AbstractEventLoop | None = None
    _main: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _timer: asyncio.TimerHandle | None = None
    _episode: _Episode | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = threading.get_ident()
        self._beat = time.monotonic()
        self._timer = self._loop.call_later(BEAT, self._tick, self._beat + BEAT)
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._thread.join(1.0)

    # -- on the loop ---------------------------------------------------------------------------------------------
    def _tick(self, due: float) -> None:
        assert self._loop is not None
        now = time.monotonic()
        late = max(0.0, now - due)
        self.lag_sum += late
        self.lag_counts[next((i for i, b in enumerate(LAG_BUCKETS) if late <= b), len(LAG_BUCKETS))] += 1
        self._beat = now
        self._timer = self._loop.call_later(BEAT, self._tick, now + BEAT)

    def _report(self, episode: _Episode) -> None:
        """On the loop, once it turns again: the episode's whole length is known."""
        duration = time.monotonic() - episode.since - BEAT
        if duration < self.threshold:
            return
        record = self.by_path.setdefault(episode.path, Blocked())
        record.count += 1
        record.total_s += duration
        record.last_at, record.last_s, record.frames = time.time(), duration, episode.frames
        if self.bus.active:
            self.bus.emit(LoopBlocked(path=episode.path, duration_s=round(duration, 3), task=episode.task,
                                      frames=episode.frames))  # fmt: skip

    # -- on the watchdog thread ------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(BEAT / 2):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled <= self.threshold:
                continue
            if self._episode is not None and self._episode.since == beat:
                continue  # this episode is sampled already
            self._episode = self._sample(beat)
            try:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._report, self._episode)
            except RuntimeError:  # the loop closed
                return

    def _sample(self, beat: float) -> _Episode:
        frame = sys._current_frames().get(self._main)  # noqa: SLF001 - the documented way to see another thread's stack
        task = asyncio.current_task(self._loop) if self._loop is not None else None
        name = task.get_name() if task is not None else ""
        path = name if name and self.is_path(name) else _context_path(frame)
        return _Episode(since=beat, path=path, task=name, frames=_frames(frame))


def _context_path(frame: FrameType | None) -> str:
    """The path of the first ``ChildContext`` a frame of the stack holds in a local (a worker's ``ctx``)."""
    from .context import ChildContext

    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, ChildContext):
                return value.path
        frame = frame.f_back
    return ""


def _frames(frame: FrameType | None) -> tuple[str, ...]:
    """The innermost frames, the standard library's left out (they say where, not whose)."""
    if frame is None:
        return ()
    stack = traceback.extract_stack(frame)
    own = [f for f in stack if not f.filename.startswith(_STDLIB)] or list(stack)
    return tuple(f"{f.filename}:{f.lineno} in {f.name}" for f in own[-FRAMES:])
