"""structlog, configured once: JSON lines on stdout in production, the console renderer on a TTY."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from ..core.context import current_child

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}  # fmt: skip


def add_child(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The running child's path (a context variable the core sets in every child task) as ``child``."""
    if "child" not in event:
        path = current_child.get()
        if path is not None:
            event["child"] = path
    return event


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """``fmt``: json | console | auto (console on a TTY, JSON otherwise)."""
    out = stream if stream is not None else sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_child,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "mcp_supervisor") -> Any:
    return structlog.get_logger(name)


def bind(**values: Any) -> None:
    """Bind context (child id, tenant, request id) for the current task's log lines."""
    structlog.contextvars.bind_contextvars(**values)
