"""Child specs and supervisor flags: frozen, validated value objects (OTP ``check_childspec``).

Every default lives here. Errors are :class:`SpecError` naming the field and the bad value, e.g.
``children[2].shutdown: must be >= 0 seconds, "brutal_kill" or "infinity", got -1``.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from .context import ChildContext
from .errors import SpecError


class Restart(enum.StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal exit
    TEMPORARY = "temporary"  # never restarted; removed after it exits


class Strategy(enum.StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"
    SIMPLE_ONE_FOR_ONE = "simple_one_for_one"


class AutoShutdown(enum.StrEnum):
    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


BRUTAL_KILL: Literal["brutal_kill"] = "brutal_kill"
INFINITY: Literal["infinity"] = "infinity"
ShutdownSpec: TypeAlias = float | Literal["brutal_kill", "infinity"]
WorkerFn: TypeAlias = Callable[[ChildContext[Any]], Awaitable[None]]

DEFAULT_WORKER_SHUTDOWN = 5.0
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_INTENSITY = 3
DEFAULT_PERIOD = 5.0


def _enum(cls: type[enum.StrEnum], value: object, fld: str) -> Any:
    try:
        return cls(value)  # type: ignore[arg-type]
    except ValueError:
        allowed = " | ".join(m.value for m in cls)
        raise SpecError(fld, f"must be one of {allowed}", value) from None


def _number(value: object, fld: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(fld, "must be a finite number", value)
    if value < minimum or (strict and value == minimum):
        raise SpecError(fld, f"must be {'>' if strict else '>='} {minimum:g}", value)
    return float(value)


MAX_ID = 255


def _check_id(value: object, fld: str = "id") -> None:
    if not isinstance(value, str) or not value:
        raise SpecError(fld, "must be a non-empty string", value)
    if len(value) > MAX_ID:
        raise SpecError(fld, f"must be at most {MAX_ID} characters (it is used in paths), got {len(value)}")
    if "/" in value or value != value.strip() or not value.isprintable():
        raise SpecError(
            fld, "must not contain '/', control characters or surrounding spaces (it is used in paths)", value
        )


def _check_argv(value: object, fld: str, what: str) -> tuple[str, ...]:
    """A non-empty list of strings without NUL; the values themselves are never quoted (they may hold secrets)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        got = "an empty list" if isinstance(value, Sequence) and not isinstance(value, str) else type(value).__name__
        raise SpecError(fld, f"must be a non-empty list of strings ({what}), got {got}")
    for i, a in enumerate(value):
        if not isinstance(a, str):
            raise SpecError(f"{fld}[{i}]", f"must be a string, got {type(a).__name__}")
        if "\x00" in a:
            raise SpecError(f"{fld}[{i}]", "must not contain a NUL character")
    if not value[0]:
        raise SpecError(f"{fld}[0]", "the program must not be empty")
    return tuple(value)


def shutdown_timeout(shutdown: ShutdownSpec) -> float | None:
    """Seconds to wait after asking a child to stop; 0 = force at once; None = wait forever."""
    if shutdown == BRUTAL_KILL:
        return 0.0
    if shutdown == INFINITY:
        return None
    return float(shutdown)


def _check_shutdown(value: object, fld: str = "shutdown") -> None:
    if value in (BRUTAL_KILL, INFINITY):
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise SpecError(fld, 'must be >= 0 seconds, "brutal_kill" or "infinity"', value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Per-child restart delay: ``initial * multiplier**n``, capped at ``max``, +/- ``jitter`` (a fraction).

    The count ``n`` resets once the child has stayed up ``reset_after`` seconds (default ``(initial+max)/2``,
    as Akka typed does).
    """

    initial: float = 0.5
    max: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1
    reset_after: float | None = None

    def __post_init__(self) -> None:
        _number(self.initial, "backoff.initial", strict=True)
        _number(self.max, "backoff.max", strict=True)
        if self.max < self.initial:
            raise SpecError("backoff.max", f"must be >= backoff.initial ({self.initial:g})", self.max)
        if _number(self.multiplier, "backoff.multiplier") < 1:
            raise SpecError("backoff.multiplier", "must be >= 1", self.multiplier)
        if not 0 <= _number(self.jitter, "backoff.jitter") <= 1:
            raise SpecError("backoff.jitter", "must be between 0 and 1", self.jitter)
        if self.reset_after is not None:
            _number(self.reset_after, "backoff.reset_after", strict=True)

    @property
    def stable_after(self) -> float:
        return self.reset_after if self.reset_after is not None else (self.initial + self.max) / 2

    def delay(self, attempt: int, rand: float = 0.5) -> float:
        """Delay before restart number ``attempt`` (0-based); ``rand`` in [0, 1) drives the jitter."""
        try:
            base = min(self.max, self.initial * self.multiplier ** min(attempt, 64))
        except OverflowError:  # e.g. multiplier = 1e300: the cap applies
            base = self.max
        return max(0.0, min(self.max, base * (1 + self.jitter * (2 * rand - 1))))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyTCP:
    """Ready once ``host:port`` accepts a TCP connection."""

    host: str
    port: int
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise SpecError("ready.tcp", "host must be a non-empty string", self.host)
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise SpecError("ready.tcp", "port must be an integer in 1..65535", self.port)
        _number(self.timeout, "ready.timeout", strict=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyCommand:
    """Ready once ``command`` exits 0 (retried every ``interval`` seconds)."""

    command: Sequence[str]
    timeout: float = 30.0
    interval: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", _check_argv(self.command, "ready.command", "program, then arguments"))
        _number(self.timeout, "ready.timeout", strict=True)
        _number(self.interval, "ready.interval", strict=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyOutput:
    """Ready once the process prints a line (stdout or stderr) that ``pattern`` (a regular expression) finds —
    ``Listening on``, ``ready to accept connections``."""

    pattern: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise SpecError("ready.output", "must be a non-empty regular expression", self.pattern)
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise SpecError("ready.output", f"is not a regular expression ({e})", self.pattern) from None
        _number(self.timeout, "ready.timeout", strict=True)


Readiness: TypeAlias = ReadyTCP | ReadyCommand | ReadyOutput | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Liveness:
    """A check run every ``every`` seconds once the child is ready; after ``failures`` failures in a row the child
    is restarted as an abnormal exit with reason ``liveness``. Exactly one of ``http`` (a URL answering 2xx/3xx),
    ``tcp`` (``(host, port)`` accepting a connection) or ``command`` (exiting 0), each within ``timeout``."""

    http: str | None = None
    tcp: tuple[str, int] | None = None
    command: Sequence[str] | None = None
    every: float = 5.0
    timeout: float = 2.0
    failures: int = 3

    def __post_init__(self) -> None:
        given = [k for k in ("http", "tcp", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise SpecError("live", 'needs exactly one of "http", "tcp" or "command"', given)
        if self.http is not None and (not isinstance(self.http, str) or not self.http.startswith("http://")):
            raise SpecError("live.http", "must be an http:// URL", self.http)
        if self.tcp is not None:
            host, port = self.tcp
            if (
                not isinstance(host, str)
                or not host
                or isinstance(port, bool)
                or not isinstance(port, int)
                or not (0 < port < 65536)
            ):
                raise SpecError("live.tcp", "must be a host and a port in 1..65535", self.tcp)
        if self.command is not None:
            object.__setattr__(self, "command", _check_argv(self.command, "live.command", "program, then arguments"))
        _number(self.every, "live.every", strict=True)
        _number(self.timeout, "live.timeout", strict=True)
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) or self.failures < 1:
            raise SpecError("live.failures", "must be an integer >= 1", self.failures)


RLIMITS = {"nofile": "nofile", "nproc": "nproc", "core": "core", "memory": "as", "cpu_seconds": "cpu",
           "stack": "stack", "fsize": "fsize", "memlock": "memlock"}  # fmt: skip
"""``limits`` keys and the resource each sets (``memory`` is the address space, RLIMIT_AS), applied before exec."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Common:
    id: str
    restart: Restart = Restart.PERMANENT
    shutdown: ShutdownSpec = DEFAULT_WORKER_SHUTDOWN
    significant: bool = False
    backoff: Backoff | None = None
    start_retries: int = 0
    """How many times a failed first start is tried again (after the backoff's delays) before it counts as the
    supervisor's start failure; 0 is OTP's rule (supervisord's ``startretries`` is the opt-in equivalent)."""
    fencing_token: int | None = None
    """Set by whoever grants this incarnation a lease (fleet singletons): workers read ``ctx.fencing_token``, OS
    processes ``MCP_FENCING_TOKEN``; a store guarding its writes with it refuses an older holder's late writes."""

    def _check_common(self) -> None:
        _check_id(self.id)
        if self.fencing_token is not None and (isinstance(self.fencing_token, bool)
                                               or not isinstance(self.fencing_token, int)):  # fmt: skip
            raise SpecError("fencing_token", "must be an integer", self.fencing_token)
        object.__setattr__(self, "restart", _enum(Restart, self.restart, "restart"))
        _check_shutdown(self.shutdown)
        if not isinstance(self.significant, bool):
            raise SpecError("significant", "must be true or false", self.significant)
        if self.significant and self.restart is Restart.PERMANENT:
            raise SpecError("significant", "a permanent child cannot be significant (use transient or temporary)", True)
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise SpecError("backoff", "must be a Backoff", self.backoff)
        if (
            isinstance(self.start_retries, bool)
            or not isinstance(self.start_retries, int)
            or not (0 <= self.start_retries <= 1000)
        ):
            raise SpecError("start_retries", "must be an integer 0..1000", self.start_retries)

    @property
    def shutdown_timeout(self) -> float | None:
        return shutdown_timeout(self.shutdown)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec(_Common):
    """An in-process worker: ``run(ctx)`` calls ``ctx.started(handle)`` once usable, then serves until done.

    Returning is a *normal* exit, raising :class:`Shutdown` a *shutdown* exit, anything else *abnormal*.
    """

    run: WorkerFn
    start_timeout: float | None = DEFAULT_START_TIMEOUT
    args: Sequence[Any] = ()
    kind: Literal["worker"] = field(default="worker", init=False)

    def __post_init__(self) -> None:
        self._check_common()
        if not callable(self.run):
            raise SpecError("run", "must be an async callable taking the child context", self.run)
        if self.start_timeout is not None:
            _number(self.start_timeout, "start_timeout", strict=True)
        object.__setattr__(self, "args", tuple(self.args))


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec(_Common):
    """An OS process in its own process group, stopped with SIGTERM to the group, SIGKILL after ``shutdown``."""

    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    inherit_env: bool = True
    ready: Readiness = None
    stop_signal: int = 15  # SIGTERM
    reload_signal: int | None = None  # sent instead of nothing when the daemon reloads and this table is unchanged
    pidfile: str | None = None  # the program daemonizes itself: the process this file names is the child
    limits: Mapping[str, int] = field(default_factory=dict)  # RLIMITS key -> value (both soft and hard)
    user: str | None = None  # run as (needs the daemon to run as root)
    group: str | None = None
    umask: int | None = None
    sockets: Sequence[str] = ()  # names of sockets the tree holds, passed by systemd's LISTEN_FDS protocol
    max_memory: int | None = None  # bytes of resident memory of the whole process group
    memory_check: float = 1.0  # seconds between two looks at max_memory (two in a row above it: restart)
    live: Liveness | None = None
    control: bool = False  # a control channel: a connected unix socket, fd $MCP_CONTROL_FD in the process
    template: str | None = None  # a Python module whose main(command[3:]) this is: forked from a fork server
    exit_reasons: Mapping[int, tuple[str, str]] = field(default_factory=dict)  # code -> (kind, detail) it stands for
    kind: Literal["process"] = field(default="process", init=False)

    def __post_init__(self) -> None:
        self._check_common()
        object.__setattr__(self, "command", _check_argv(self.command, "command", "program, then arguments"))
        if not isinstance(self.env, Mapping):
            raise SpecError("env", f"must map names to strings, got {type(self.env).__name__}")
        for k, v in self.env.items():
            if not isinstance(k, str) or not k or "=" in k or "\x00" in k:
                raise SpecError("env", "names must be non-empty strings without '=' or NUL", k)
            if not isinstance(v, str):  # the value itself is never quoted: it may be a secret
                raise SpecError(f"env.{k}", f"must be a string, got {type(v).__name__}")
            if "\x00" in v:
                raise SpecError(f"env.{k}", "must not contain a NUL character")
        object.__setattr__(self, "env", dict(self.env))
        if self.cwd is not None and (not isinstance(self.cwd, str) or not self.cwd or "\x00" in self.cwd):
            raise SpecError("cwd", "must be a non-empty path", self.cwd)
        if self.ready is not None and not isinstance(self.ready, ReadyTCP | ReadyCommand | ReadyOutput):
            raise SpecError("ready", "must be ReadyTCP, ReadyCommand, ReadyOutput or None", self.ready)
        self._check_os_options()

    def _check_os_options(self) -> None:  # noqa: C901, PLR0912 - one check per OS option, each with its own message
        for name in ("stop_signal", "reload_signal"):
            sig = getattr(self, name)
            if sig is not None and (isinstance(sig, bool) or not isinstance(sig, int) or not 0 < sig < 65):
                raise SpecError(name, "must be a signal number 1..64", sig)
        if self.pidfile is not None and (not isinstance(self.pidfile, str) or not self.pidfile):
            raise SpecError("pidfile", "must be a path", self.pidfile)
        for k, v in dict(self.limits).items():
            if k not in RLIMITS:
                raise SpecError(f"limits.{k}", f"unknown limit (known: {', '.join(sorted(RLIMITS))})", k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SpecError(f"limits.{k}", "must be an integer >= 0", v)
        object.__setattr__(self, "limits", dict(self.limits))
        for fld in ("user", "group"):
            v = getattr(self, fld)
            if v is not None and (not isinstance(v, str) or not v or not v.replace("-", "").replace("_", "").isalnum()):
                raise SpecError(fld, "must be a user or group name (or number)", v)
        if self.umask is not None and (isinstance(self.umask, bool) or not isinstance(self.umask, int)
                                       or not 0 <= self.umask <= 0o777):  # fmt: skip
            raise SpecError("umask", "must be an integer 0..0o777", self.umask)
        names = tuple(self.sockets)
        if not all(isinstance(n, str) and n.replace("-", "").replace("_", "").isalnum() for n in names):
            raise SpecError("sockets", "must be socket names (letters, digits, '-', '_')", names)
        if len(set(names)) != len(names):
            raise SpecError("sockets", "names a socket twice", names)
        object.__setattr__(self, "sockets", names)
        if self.max_memory is not None and (isinstance(self.max_memory, bool) or not isinstance(self.max_memory, int)
                                            or self.max_memory < 1):  # fmt: skip
            raise SpecError("max_memory", "must be a number of bytes >= 1", self.max_memory)
        _number(self.memory_check, "memory_check", strict=True)
        if self.live is not None and not isinstance(self.live, Liveness):
            raise SpecError("live", "must be a Liveness", self.live)

    @property
    def start_timeout(self) -> float | None:
        return self.ready.timeout if self.ready is not None else DEFAULT_START_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorFlags:
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = DEFAULT_INTENSITY
    period: float = DEFAULT_PERIOD
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", _enum(Strategy, self.strategy, "strategy"))
        object.__setattr__(self, "auto_shutdown", _enum(AutoShutdown, self.auto_shutdown, "auto_shutdown"))
        if isinstance(self.intensity, bool) or not isinstance(self.intensity, int) or self.intensity < 0:
            raise SpecError("intensity", "must be an integer >= 0", self.intensity)
        object.__setattr__(self, "period", _number(self.period, "period", strict=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorSpec(_Common):
    """A supervisor: ``children`` started in order under ``flags``.

    With ``simple_one_for_one``, ``children`` holds exactly one template and starts empty.
    """

    children: Sequence[ChildSpec] = ()
    flags: SupervisorFlags = field(default_factory=SupervisorFlags)
    shutdown: ShutdownSpec = INFINITY
    kind: Literal["supervisor"] = field(default="supervisor", init=False)

    def __post_init__(self) -> None:
        self._check_common()
        if not isinstance(self.flags, SupervisorFlags):
            raise SpecError("flags", "must be SupervisorFlags", self.flags)
        children = tuple(self.children)
        object.__setattr__(self, "children", children)
        seen: set[str] = set()
        for i, child in enumerate(children):
            if not isinstance(child, WorkerSpec | ProcessSpec | SupervisorSpec):
                raise SpecError(f"children[{i}]", "must be a WorkerSpec, ProcessSpec or SupervisorSpec", child)
            if child.id in seen:
                raise SpecError(f"children[{i}].id", "duplicate id within this supervisor", child.id)
            seen.add(child.id)
            if child.significant and self.flags.auto_shutdown is AutoShutdown.NEVER:
                raise SpecError(
                    f"children[{i}].significant",
                    'a significant child needs auto_shutdown = "any_significant" or "all_significant"',
                    True,
                )
        if self.flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE and len(children) != 1:
            raise SpecError("children", "simple_one_for_one needs exactly one template child", len(children))

    @property
    def template(self) -> ChildSpec:
        return self.children[0]

    def warnings(self) -> list[str]:
        """Legal configurations that cannot behave as intended (erlang/otp#4648).

        In a group restart (one_for_all, rest_for_one) each cycle waits out the siblings' shutdown times; a child
        that may take longer than ``period`` seconds to stop means the window never holds two restarts, so the
        intensity limit can never be reached and a crash loop never escalates.
        """
        out: list[str] = []
        if self.flags.strategy in (Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE) and self.flags.intensity > 0:
            for child in self.children:
                if child.kind == "supervisor":
                    continue
                t = child.shutdown_timeout
                if t is None or t > self.flags.period:
                    out.append(
                        f"{self.id}: child {child.id!r} may take {child.shutdown}s to stop, longer than "
                        f"period = {self.flags.period:g}s, so a {self.flags.strategy} restart loop may never "
                        "reach the intensity limit"
                    )
        return out


ChildSpec: TypeAlias = WorkerSpec | ProcessSpec | SupervisorSpec
