"""The restart policy as pure functions: what happens to a child that exited, and which children a restart takes.

No state, no time, no tasks: the supervisor asks, then acts. Each function is one row group of docs/semantics.md.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TypeVar

from .events import ExitKind
from .specs import AutoShutdown, Restart, Strategy

T = TypeVar("T")


class Decision(enum.StrEnum):
    RESTART = "restart"  # restart it (counted in the intensity window), with its strategy's group
    KEEP = "keep"  # leave it stopped, keep its spec
    REMOVE = "remove"  # leave it stopped and forget it


def after_exit(restart: Restart, kind: ExitKind, *, dynamic: bool = False) -> Decision:
    """A child exited by itself: permanent always restarts, transient only after an abnormal exit, temporary never.

    A child that is not restarted keeps its spec, except a temporary one, and any child of a simple_one_for_one
    supervisor (its spec is the template).
    """
    if restart is Restart.PERMANENT or (restart is Restart.TRANSIENT and kind == "abnormal"):
        return Decision.RESTART
    if restart is Restart.TEMPORARY or dynamic:
        return Decision.REMOVE
    return Decision.KEEP


def restart_group(strategy: Strategy, children: Sequence[T], failed: T) -> list[T]:
    """The children a restart of ``failed`` takes, in start order (``children`` is in start order)."""
    if strategy is Strategy.ONE_FOR_ALL:
        return list(children)
    if strategy is Strategy.REST_FOR_ONE:
        return list(children[list(children).index(failed) :])
    return [failed]


def caught(group: Sequence[T], failed: T, restart_of: Callable[[T], Restart]) -> list[T]:
    """Members of a group restart that are dropped instead of restarted: the temporary siblings of ``failed``."""
    return [c for c in group if c is not failed and restart_of(c) is Restart.TEMPORARY]


def retry_group(strategy: Strategy, group: Sequence[T], failed_at: int) -> list[T]:
    """After a start failed at ``group[failed_at]``: what the next attempt starts.

    one_for_all restarts the whole group (OTP's ``restart(one_for_all, ...)`` first stops what the failed attempt
    started); every other strategy resumes from the child that failed.
    """
    return list(group) if strategy is Strategy.ONE_FOR_ALL else list(group[failed_at:])


def auto_shutdown(mode: AutoShutdown, significant_left_running: bool) -> bool:
    """A significant child exited by itself and is not restarted: does its supervisor shut down?"""
    if mode is AutoShutdown.ANY_SIGNIFICANT:
        return True
    return mode is AutoShutdown.ALL_SIGNIFICANT and not significant_left_running
