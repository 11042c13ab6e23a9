"""Restart intensity as a pure function of monotonic time (OTP ``add_restart/3``)."""

from __future__ import annotations

from collections import deque


def add_restart(
    restarts: tuple[float, ...], now: float, intensity: int, period: float
) -> tuple[bool, tuple[float, ...]]:
    """Record a restart attempt at ``now``.

    Keeps the attempts within the last ``period`` seconds (inclusive edge) plus ``now``. Returns ``(allowed,
    kept)``: ``allowed`` is False when more than ``intensity`` attempts remain in the window, meaning the
    supervisor must give up.
    """
    kept = (*(t for t in restarts if now - t <= period), now)
    return len(kept) <= intensity, kept


class RestartWindow:
    """The incremental form of :func:`add_restart` a supervisor keeps: O(1) amortised per attempt.

    Attempts arrive in monotonic order, so expired ones are always at the left end.
    """

    __slots__ = ("_times", "intensity", "period")

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        self._times: deque[float] = deque()

    def add(self, now: float) -> bool:
        """Record an attempt at ``now``; False when the supervisor must give up."""
        times = self._times
        while times and now - times[0] > self.period:
            times.popleft()
        times.append(now)
        return len(times) <= self.intensity

    @property
    def attempts(self) -> tuple[float, ...]:
        return tuple(self._times)
