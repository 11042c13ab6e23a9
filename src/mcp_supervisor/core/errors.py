"""Errors raised by the supervision core.

One root, :class:`SupervisorError`; every message says what happened and, where it helps, what to do::

    SupervisorError
    ├── SpecError               a child spec or supervisor flag is invalid (names the field and the value)
    ├── FailedToStartChild      a child failed while its supervisor started it
    ├── NoSuchPath              a runtime operation named a supervisor or child that does not exist
    ├── OperationError          a runtime operation is not valid in the child's current state
    ├── MailboxFull             cast_nowait on a full mailbox
    └── CallError
        ├── CallTimeout         no reply within the call's timeout
        ├── CalleeExited        the callee exited before replying
        └── NotRunning          nothing is running under that name or path

``Shutdown`` is not an error: a child raises it to exit on purpose with reason *shutdown*.
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Root of every error the supervision core raises."""


_UNSET: object = object()


class SpecError(SupervisorError, ValueError):
    """A child spec or supervisor flag is invalid.

    ``field`` is the path of the bad field, ``reason`` what is wrong with it (with the bad value when one is
    given and safe to show; values that may hold secrets, like ``env``, are described, never quoted).
    """

    def __init__(self, field: str, message: str, value: object = _UNSET) -> None:
        self.field = field
        self.value = None if value is _UNSET else value
        if value is _UNSET:
            self.reason = message
        else:
            shown = repr(value)
            self.reason = f"{message}, got {shown if len(shown) <= 80 else shown[:77] + '...'}"
        super().__init__(f"{field}: {self.reason}")


class FailedToStartChild(SupervisorError):
    """A child failed while its supervisor was starting (OTP ``failed_to_start_child``)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"failed to start child {path!r}: {reason}")


class NoSuchPath(SupervisorError, LookupError):
    """No supervisor or child at that path. ``what`` says which was looked for (``child``, ``running supervisor``)."""

    def __init__(self, path: str, what: str = "child", siblings: list[str] | None = None) -> None:
        self.path = path
        self.what = what
        parent = path.strip("/").rpartition("/")[0]
        if siblings is None:
            hint = ""
        elif siblings:
            shown = ", ".join(siblings[:20]) + (", ..." if len(siblings) > 20 else "")
            hint = f"; {'the root' if not parent else repr(parent)} has: {shown}"
        else:
            hint = f"; {'the root' if not parent else repr(parent)} has no children"
        super().__init__(f"no {what} at path {path!r}{hint}")


class OperationError(SupervisorError):
    """A runtime operation is not valid now (e.g. deleting a running child).

    ``code`` names the case as OTP's error tuples do: ``running``, ``restarting``, ``already_started``,
    ``already_present``, ``simple_one_for_one``, or ``invalid`` for a malformed request.
    """

    def __init__(self, message: str, code: str = "invalid") -> None:
        self.code = code
        super().__init__(message)


class MailboxFull(SupervisorError):
    """The mailbox is at capacity; use ``await cast(...)`` to wait for room."""


class CallError(SupervisorError):
    """A call did not produce a reply."""


class CallTimeout(CallError, TimeoutError):
    """The callee did not reply in time. A reply that arrives later is dropped."""


class CalleeExited(CallError):
    """The callee exited before it replied."""


class NotRunning(CallError):
    """Nothing is running under that name or path (it may be restarting)."""


class Shutdown(Exception):
    """Raise inside a worker to exit with reason *shutdown* (a clean exit for transient children)."""

    def __init__(self, reason: str = "shutdown") -> None:
        self.reason = reason
        super().__init__(reason)


def describe(exc: BaseException) -> str:
    """One line naming an exception and its message, never empty (``TimeoutError`` has no message of its own);
    ExceptionGroups are flattened to their leaves (trap T4)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    text = " ".join(str(exc).split())
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= 500 else out[:497] + "..."
