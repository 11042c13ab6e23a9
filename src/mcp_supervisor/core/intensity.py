"""Restart intensity as a pure function of monotonic time (OTP ``add_restart/3``)."""

from __future__ import annotations


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
