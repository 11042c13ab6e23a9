"""The supervision engine: OTP semantics for in-process workers and OS processes, on the standard library only.

Everything a user needs is exported here; the submodules are the engine's own layout (see docs/architecture.md).
"""

from .clock import Clock, Deadline, LoopClock, ManualClock
from .context import ChildContext, Key, current_child
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
    BusStatistics,
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
from .mailbox import Call, Cast, Mailbox, MailboxStatistics, Message, Registry
from .specs import (
    BRUTAL_KILL,
    INFINITY,
    RLIMITS,
    AutoShutdown,
    Backoff,
    ChildSpec,
    Liveness,
    ProcessSpec,
    ReadyCommand,
    ReadyTCP,
    Restart,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    WorkerFn,
    WorkerSpec,
)
from .state import ChildCounts, ChildView, LastExit, NodeStatus, State, SupervisorStatistics
from .supervisor import Supervisor
from .tree import ShutdownReport, Tree

__all__ = [
    "BRUTAL_KILL", "INFINITY", "RLIMITS", "AutoShutdown", "Backoff", "BusStatistics", "Call", "CallError",
    "CallTimeout", "CalleeExited", "Cast", "ChildContext", "ChildCounts", "ChildExited", "ChildSpec", "ChildStarted",
    "ChildUnstopped", "ChildView", "Clock", "Deadline", "EscapeeKilled", "Event", "EventBus", "ExitReason",
    "FailedToStartChild", "IntensityExceeded", "Key", "LastExit", "Liveness", "LoopClock", "Mailbox", "MailboxFull",
    "MailboxStatistics", "ManualClock", "Message", "NoSuchPath", "NodeStatus", "NotRunning", "OperationError",
    "ProcessOutput", "ProcessSpec", "ReadyCommand", "ReadyTCP", "Registry", "Restart", "RestartScheduled", "Shutdown",
    "ShutdownReport", "ShutdownTimeout", "SpecError", "SpecWarning", "StartFailed", "State", "Strategy",
    "Subscription", "Supervisor", "SupervisorError", "SupervisorFlags", "SupervisorSpec", "SupervisorStatistics",
    "SupervisorStopped", "Tree", "WorkerFn", "WorkerSpec", "add_restart", "current_child", "describe",
]  # fmt: skip
