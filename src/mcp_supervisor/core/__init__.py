"""The supervision engine: OTP semantics for in-process workers and OS processes (stdlib + anyio only)."""

from .clock import Clock, LoopClock, ManualClock
from .context import ChildContext
from .errors import (
    CalleeExited,
    CallError,
    CallTimeout,
    FailedToStartChild,
    MailboxFull,
    NoSuchPath,
    NotRunning,
    OperationError,
    Shutdown,
    SpecError,
    SupervisorError,
    describe,
)
from .events import (
    ChildExited,
    ChildStarted,
    ChildUnstopped,
    EscapeeKilled,
    Event,
    EventBus,
    ExitReason,
    IntensityExceeded,
    ProcessOutput,
    RestartScheduled,
    ShutdownTimeout,
    SpecWarning,
    StartFailed,
    Subscription,
    SupervisorStopped,
)
from .intensity import add_restart
from .mailbox import Call, Cast, Mailbox, Message, Registry
from .specs import (
    BRUTAL_KILL,
    INFINITY,
    AutoShutdown,
    Backoff,
    ChildSpec,
    ProcessSpec,
    ReadyCommand,
    ReadyTCP,
    Restart,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    WorkerSpec,
)
from .supervisor import State, Supervisor
from .tree import ShutdownReport, Tree

__all__ = [
    "BRUTAL_KILL", "INFINITY", "AutoShutdown", "Backoff", "Call", "CallError", "CallTimeout", "CalleeExited",
    "Cast", "ChildContext", "ChildExited", "ChildSpec", "ChildStarted", "ChildUnstopped", "Clock", "EscapeeKilled",
    "Event", "EventBus", "ExitReason", "FailedToStartChild", "IntensityExceeded", "LoopClock", "Mailbox",
    "MailboxFull", "ManualClock", "Message", "NoSuchPath", "NotRunning", "OperationError", "ProcessOutput",
    "ProcessSpec", "ReadyCommand", "ReadyTCP", "Registry", "Restart", "RestartScheduled", "Shutdown",
    "ShutdownReport", "ShutdownTimeout", "SpecError", "SpecWarning", "StartFailed", "State", "Strategy",
    "Subscription", "Supervisor", "SupervisorError", "SupervisorFlags", "SupervisorSpec", "SupervisorStopped", "Tree",
    "WorkerSpec", "add_restart", "describe",
]  # fmt: skip
