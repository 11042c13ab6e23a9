"""structlog, configured once: JSON lines on stdout in production, the console renderer on a TTY.

Every line the daemon writes goes through one pipeline and one redaction step — our own events and every library's
log records alike (aiohttp, asyncpg, botocore, redis-py, asyncio), plus warnings, unraisable exceptions and
exceptions escaping threads — so all of it is in the configured format and none of it carries a secret.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import structlog

from ..core.context import current_child
from ..redact import STRUCTURAL, Redactor

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}  # fmt: skip
# libraries that are chatty at INFO about things the daemon already reports
_QUIET = {"aiohttp.access": logging.WARNING, "botocore": logging.WARNING, "aiobotocore": logging.WARNING,
          "urllib3": logging.WARNING}  # fmt: skip

REDACTOR = Redactor()
"""The process's redactor: the daemon updates its secrets on every (re)load; tests may replace them."""


def add_child(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The running child's path (a context variable the core sets in every child task) as ``child``."""
    if "child" not in event:
        path = current_child.get()
        if path is not None:
            event["child"] = path
    return event


def _redactor(redactor: Redactor) -> Any:
    def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if key not in STRUCTURAL and isinstance(value, str | dict | list | tuple):
                event[key] = redactor.redact_value(value)
        return event

    return redact


def _drop_meta(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    if event.get("logger") == "mcp_supervisor":
        event.pop("logger")
    return event


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: Any = None,
    redactor: Redactor | None = None,
    *,
    stdlib: bool = False,
) -> None:
    """``fmt``: json | console | auto (console on a TTY, JSON otherwise).

    ``stdlib``: also take over the standard library's logging (every library's records), warnings, and the hooks
    through which Python prints stray exceptions — what the daemon does; tests leave those to pytest.
    """
    out = stream if stream is not None else sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer(default=str)
    redact = _redactor(redactor if redactor is not None else REDACTOR)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_child,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    if stdlib:
        _take_over_stdlib(out, level, renderer, redact, stamp)


def _take_over_stdlib(out: Any, level: str, renderer: Any, redact: Any, stamp: Any) -> None:
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                add_child,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                stamp,
                structlog.processors.format_exc_info,
                redact,
            ],
            processors=[_drop_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    for name, lvl in _QUIET.items():
        logging.getLogger(name).setLevel(max(lvl, _LEVELS[level]))
    logging.captureWarnings(True)
    _route_stray_errors()


def _route_stray_errors() -> None:
    """Exceptions that Python would print straight to stderr go through the pipeline instead."""
    log = logging.getLogger("mcp_supervisor.errors")

    def unraisable(info: Any) -> None:
        what = info.err_msg or "exception ignored"
        obj = f" in {info.object!r}" if info.object is not None else ""
        log.error("%s%s", what, obj, exc_info=(info.exc_type, info.exc_value, info.exc_traceback))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        log.error("exception in thread %s", name, exc_info=args.exc_value or True)

    def excepthook(et: type[BaseException], ev: BaseException, tb: TracebackType | None) -> None:
        log.critical("unhandled exception", exc_info=(et, ev, tb))

    sys.unraisablehook = unraisable
    threading.excepthook = thread_hook
    sys.excepthook = excepthook


def get_logger(name: str = "mcp_supervisor") -> Any:
    return structlog.get_logger(name)


def bind(**values: Any) -> None:
    """Bind context (child id, tenant, request id) for the current task's log lines."""
    structlog.contextvars.bind_contextvars(**values)
