"""structlog, configured once: JSON lines on stdout in production, the console renderer on a TTY.

Every line the daemon writes goes through one pipeline and one redaction step — our own events and every library's
log records alike (aiohttp, asyncpg, botocore, redis-py, asyncio), plus warnings, unraisable exceptions and
exceptions escaping threads — so all of it is in the configured format and none of it carries a secret.

Lines are written by a thread (:class:`LineWriter`), never by the event loop: stdout under systemd is a pipe to
journald, and a journald slower than a crash storm's log rate would otherwise block the loop on every line —
restarts, the admin port and SIGTERM slowed to the pace of the log reader. When the writer falls too far behind,
lines are dropped, counted, and announced in the next line written.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any, TextIO, cast

import structlog

from ..config.redact import STRUCTURAL, Redactor
from ..core.context import current_child

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}  # fmt: skip
# libraries that are chatty at INFO about things the daemon already reports
_QUIET = {"aiohttp.access": logging.WARNING, "botocore": logging.WARNING, "aiobotocore": logging.WARNING,
          "urllib3": logging.WARNING}  # fmt: skip

REDACTOR = Redactor()
"""The process's redactor: the daemon updates its secrets on every (re)load; tests may replace them."""
WRITER_CAPACITY = 20_000  # lines waiting for the writer thread before new ones are dropped


class LineWriter:
    """A file-like sink whose ``write`` never blocks: a thread writes what it is given, in order.

    ``write`` takes whole lines (structlog and logging write one line per call). Beyond ``capacity`` waiting lines,
    new ones are dropped and counted (``dropped``); the writer announces how many through ``notice`` before the
    next line it writes. ``close`` flushes what is queued, within a bound.
    """

    def __init__(self, stream: Any, capacity: int = WRITER_CAPACITY) -> None:
        self.stream = stream
        self.capacity = capacity
        self.dropped = 0
        self.notice: Any = lambda n: f"{n} log lines were dropped: the log reader (stdout) was too slow\n"
        self._lines: collections.deque[str] = collections.deque()
        self._unreported = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="mcp-log-writer", daemon=True)
        self._thread.start()

    def write(self, text: str) -> int:
        with self._cond:
            if len(self._lines) >= self.capacity:
                self.dropped += 1
                self._unreported += 1
                return 0
            self._lines.append(text)
            if len(self._lines) == 1:
                self._cond.notify()
        return len(text)

    def flush(self) -> None:
        """Lines are flushed by the writer thread as it writes them."""

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._closing:
                    self._cond.wait()
                if not self._lines and self._closing:
                    return
                batch = list(self._lines)
                self._lines.clear()
                lost, self._unreported = self._unreported, 0
            text = (self.notice(lost) if lost else "") + "".join(batch)
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # stdout closed: nothing more can be written anywhere
                with self._cond:
                    self._closing = True
                    self._lines.clear()
                return

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (at most ``timeout`` seconds), then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)


_WRITERS: dict[int, LineWriter] = {}


def writer_for(stream: Any) -> LineWriter:
    """The one writer of ``stream`` (each stream gets a single thread, whoever configures logging)."""
    found = _WRITERS.get(id(stream))
    if found is None or found.stream is not stream:
        found = _WRITERS[id(stream)] = LineWriter(stream)
    return found


def close_writers(timeout: float = 2.0) -> None:
    for w in list(_WRITERS.values()):
        w.close(timeout)
    _WRITERS.clear()


def add_child(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The running child's path (a context variable the core sets in every child task) as ``child``."""
    if "child" not in event:
        path = current_child.get()
        if path is not None:
            event["child"] = path
    return event


_TAP_SKIP = frozenset({"event", "level", "ts", "child", "logger", "timestamp"})


class _Tap:
    fn: Callable[[str, str, str], None] | None = None


def set_tap(tap: Callable[[str, str, str], None] | None) -> None:
    """``tap(child_path, level, text)`` receives every (redacted) line logged from inside a child's task."""
    _Tap.fn = tap


def tap_child_lines(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Hands a child's own log lines (those logged from inside its task) to the tap: they go into its output ring."""
    tap = _Tap.fn
    if tap is not None:
        path = current_child.get()
        if path is not None and event.get("child", path) == path:
            extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in _TAP_SKIP)
            text = f"{event.get('event', '')} {extra}".strip()
            tap(path, str(event.get("level", "info")), text)
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
    threaded: bool = False,
) -> LineWriter | None:
    """``fmt``: json | console | auto (console on a TTY, JSON otherwise).

    ``stdlib``: also take over the standard library's logging (every library's records), warnings, and the hooks
    through which Python prints stray exceptions. ``threaded``: write through a :class:`LineWriter` (returned).
    The daemon asks for both; tests leave them to pytest.
    """
    out = stream if stream is not None else sys.stdout
    writer = writer_for(out) if threaded else None
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
            tap_child_lines,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=(
            structlog.WriteLoggerFactory(cast(TextIO, writer))
            if writer is not None
            else structlog.PrintLoggerFactory(out)
        ),
        cache_logger_on_first_use=False,
    )
    if writer is not None:
        writer.notice = lambda n: renderer(None, "warning", {
            "event": "log lines dropped: the log reader (stdout) was too slow", "dropped": n, "level": "warning",
            "ts": stamp(None, "", {})["ts"]}) + "\n"  # fmt: skip
    if stdlib:
        _take_over_stdlib(writer if writer is not None else out, level, renderer, redact, stamp)
    return writer


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
                tap_child_lines,
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
