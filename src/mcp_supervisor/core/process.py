"""OS-process children: own process group, parent-death signal, reaping, group stop, line-by-line output.

Why not ``asyncio.create_subprocess_exec``: we need ``prctl(PR_SET_PDEATHSIG)`` in the child, exit detection that
works the same on asyncio and uvloop (a pidfd in the loop's selector; avoids MagicStack/uvloop#128 and #118), and
to kill what is left of the group *before* reaping the leader, while its pgid cannot yet be reused.

Nothing outlives the daemon: each child gets SIGKILL when the daemon's thread that spawned it dies
(PDEATHSIG), and a small guardian process, holding the read end of a pipe, SIGKILLs every registered group when
that pipe closes — which happens even on ``kill -9`` of the daemon — so grandchildren go too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .clock import wait_done
from .context import ChildContext
from .escapes import Escapes
from .events import NORMAL, EventBus, ExitReason, ProcessOutput
from .specs import ProcessSpec, ReadyCommand, ReadyTCP

_PR_SET_PDEATHSIG = 1
_MAX_LINE = 64 * 1024
_SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal, the guardian still covers us
    _prctl = None


_SETPRIV = shutil.which("setpriv")


def resolve_program(spec: ProcessSpec, env: dict[str, str]) -> str:
    """The executable ``spec.command[0]`` names, found as exec would; FileNotFoundError names what is missing."""
    prog = spec.command[0]
    if "/" in prog:
        path = prog if os.path.isabs(prog) or spec.cwd is None else os.path.join(spec.cwd, prog)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return prog
        raise FileNotFoundError(f"command {prog!r} does not exist or is not executable")
    found = shutil.which(prog, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(f"command {prog!r} not found on PATH={env.get('PATH', os.defpath)!r}")
    return found


def _with_pdeathsig(argv: Sequence[str]) -> tuple[list[str], Any]:
    """The command line and preexec function that give a child SIGKILL when we die (PR_SET_PDEATHSIG).

    util-linux ``setpriv --pdeathsig`` sets it and execs the command, so we keep vfork/posix_spawn; a
    ``preexec_fn`` would force a full fork of the daemon, about 1.3 ms more per spawn. Without setpriv we fall
    back to prctl in ``preexec_fn``.
    """
    if _SETPRIV is not None:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return list(argv), _preexec(os.getpid())


def _preexec(parent_pid: int) -> Any:
    def set_pdeathsig() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the daemon died before prctl took effect
            os._exit(127)

    return set_pdeathsig


def child_env(spec: ProcessSpec) -> dict[str, str]:
    """The environment of a child: ours (unless ``inherit_env`` is false) without systemd's private variables."""
    env = dict(os.environ) if spec.inherit_env else {}
    for key in _SCRUBBED_ENV:
        env.pop(key, None)
    env.update(spec.env)
    return env


_GUARDIAN_SRC = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
daemon, me = os.getppid(), os.getpid()
groups = set()
known = {}  # every descendant of the daemon at the last scan: pid -> start time
told = {}  # escapees the daemon told us about: pid -> start time

def stat(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    return int(rest[1]), int(rest[19])

def scan():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = stat(int(name))
            if st is not None:
                kids.setdefault(st[0], []).append((int(name), st[1]))
    found, stack = {}, [daemon]
    while stack:
        for pid, start in kids.get(stack.pop(), ()):
            if pid != me and pid not in found:
                found[pid] = start
                stack.append(pid)
    return found

fd, buf, last = sys.stdin.buffer.fileno(), b"", 0.0
while True:
    now = time.monotonic()
    if now - last >= 0.5:
        known, last = scan(), now
    ready, _, _ = select.select([fd], [], [], 0.5)
    if not ready:
        continue
    chunk = os.read(fd, 65536)
    if not chunk:
        break
    *lines, buf = (buf + chunk).split(b"\n")
    for line in lines:
        try:
            if line[:2] == b"+p":  # an escapee the daemon attributed: pid:start
                pid, start = line[2:].split(b":")
                told[int(pid)] = int(start)
            elif line[:2] == b"-p":
                told.pop(int(line[2:]), None)
            elif line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
        except ValueError:
            pass
for g in groups:
    try:
        os.killpg(g, signal.SIGKILL)
    except OSError:
        pass
known.update(told)
for pid, start in known.items():  # descendants that left their group (setsid) too, if still the same process
    st = stat(pid)
    if st is not None and st[1] == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


class Guardian:
    """A helper process that SIGKILLs what the daemon leaves behind when the daemon's end of its pipe closes.

    That is every registered process group, and every descendant of the daemon it saw in its last scan of
    ``/proc`` (it scans every 0.5 s, so processes that left their group with ``setsid`` go too).
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        assert popen.stdin is not None
        self._fd = popen.stdin.fileno()

    @classmethod
    def start(cls) -> Guardian:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARDIAN_SRC],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        return cls(popen)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def _send(self, line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, line.encode())

    def register(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def unregister(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def register_pid(self, pid: int, start: int) -> None:
        """A process outside every registered group (an escapee); ``start`` guards against pid reuse."""
        self._send(f"+p{pid}:{start}\n")

    def unregister_pid(self, pid: int) -> None:
        self._send(f"-p{pid}\n")

    def close(self) -> None:
        """Close the pipe (the guardian kills what is still registered, then exits) and reap it."""
        if self._popen.stdin is not None:
            with contextlib.suppress(OSError):
                self._popen.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=5)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class OsProcess:
    """One running OS process (the leader of its own process group and session)."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        path: str,
        bus: EventBus,
        guardian: Guardian | None,
        escapes: Escapes | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._escapes = escapes
        self._loop = loop
        self._popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid
        self.path = path
        self._bus = bus
        self._guardian = guardian
        self.signals_sent: set[int] = set()
        self.exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(self.pid)
        loop.add_reader(self._pidfd, self._on_exit)
        self._streams: dict[int, tuple[str, bytearray]] = {}
        for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            if pipe is not None:
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                self._streams[fd] = (name, bytearray())
                loop.add_reader(fd, self._on_output, fd)
        if guardian is not None:
            guardian.register(self.pgid)
        if escapes is not None:
            escapes.spawned(self.pid, path)

    @classmethod
    def spawn(
        cls, spec: ProcessSpec, path: str, bus: EventBus, guardian: Guardian | None, escapes: Escapes | None = None
    ) -> OsProcess:
        env = child_env(spec)
        resolve_program(spec, env)  # a clear start failure now, not an exit code from the exec later
        argv, preexec = _with_pdeathsig(spec.command)
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
            close_fds=True,
            preexec_fn=preexec,  # noqa: PLW1509 - prctl only, no locks taken; None when setpriv does it
        )
        return cls(popen, path, bus, guardian, escapes)

    # -- output --------------------------------------------------------------------------------------------
    def _on_output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stream(fd)
            return
        self._feed(fd, data)

    def _feed(self, fd: int, data: bytes) -> None:
        name, buf = self._streams[fd]
        if not self._bus.active:
            return
        buf += data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) >= _MAX_LINE:
                    self._emit(name, bytes(buf[:_MAX_LINE]))
                    del buf[:_MAX_LINE]
                    continue
                break
            self._emit(name, bytes(buf[:nl]))
            del buf[: nl + 1]

    def _emit(self, stream: str, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self._bus.emit(ProcessOutput(path=self.path, stream=stream, line=line, pid=self.pid))  # type: ignore[arg-type]

    def _close_stream(self, fd: int) -> None:
        entry = self._streams.pop(fd, None)
        if entry is None:
            return
        self._loop.remove_reader(fd)
        name, buf = entry
        if buf and self._bus.active:
            self._emit(name, bytes(buf))
        pipe = self._popen.stdout if name == "stdout" else self._popen.stderr
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()

    def _drain(self) -> None:
        for fd in list(self._streams):
            while True:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                self._feed(fd, data)
            self._close_stream(fd)

    # -- exit ----------------------------------------------------------------------------------------------
    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        # Kill the rest of the group while the leader is a zombie: its pgid cannot be reused until we reap it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        self._reap(block=True)

    def _reap(self, block: bool) -> None:
        if self.exited.done():
            return
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped by someone else; the exit status is lost
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        self._popen.returncode = code
        with contextlib.suppress(OSError):
            os.close(self._pidfd)
        self._drain()
        if self._guardian is not None:
            self._guardian.unregister(self.pgid)
        if self._escapes is not None:
            self._escapes.ended(self.pid)
        self.exited.set_result(code)

    def _signal(self, sig: int) -> None:
        if self.exited.done():
            return
        self.signals_sent.add(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def kill_now(self) -> None:
        """SIGKILL the group and reap synchronously (teardown paths that cannot await)."""
        if self.exited.done():
            return
        self.kill()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._pidfd)
        self._reap(block=True)

    def reason(self, code: int) -> ExitReason:
        """0 → normal; death by a signal we sent → shutdown; anything else → abnormal."""
        if code == 0:
            return NORMAL
        if code < 0:
            name = _signal_name(-code)
            if -code in self.signals_sent:
                return ExitReason("shutdown", f"stopped by {name}")
            return ExitReason("abnormal", f"killed by {name}")
        return ExitReason("abnormal", f"exit code {code}")


async def _tcp_ready(ready: ReadyTCP, proc: OsProcess) -> bool:
    interval = 0.01
    while not proc.exited.done():
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection(ready.host, ready.port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        except (OSError, TimeoutError):
            pass
        if await wait_done(None, proc.exited, interval):
            break
        interval = min(interval * 2, 0.25)
    return False


async def _command_ready(ready: ReadyCommand, proc: OsProcess, spec: ProcessSpec, bus: EventBus) -> bool:
    while not proc.exited.done():
        check = subprocess.Popen(  # noqa: ASYNC220 - fork/exec returns at once; exit is awaited via pidfd
            ready.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=child_env(spec),
            cwd=spec.cwd,
            start_new_session=True,
            close_fds=True,
        )
        checker = OsProcess(check, proc.path + "#ready", bus, None)
        try:
            code = await checker.exited
        except BaseException:
            checker.kill_now()
            raise
        if code == 0:
            return True
        if await wait_done(None, proc.exited, ready.interval):
            break
    return False


async def run_process(  # noqa: PLR0917
    spec: ProcessSpec,
    path: str,
    ctx: ChildContext,
    bus: EventBus,
    guardian: Guardian | None,
    escapes: Escapes | None,
    on_spawn: Callable[[OsProcess], None],
) -> ExitReason:
    """The body of a process child's task: spawn (``on_spawn`` learns the process), wait for readiness, report
    ready, wait for the exit; its reason by the rules of :meth:`OsProcess.reason`."""
    proc = OsProcess.spawn(spec, path, bus, guardian, escapes)
    on_spawn(proc)
    try:
        if isinstance(spec.ready, ReadyTCP):
            ok = await _tcp_ready(spec.ready, proc)
        elif isinstance(spec.ready, ReadyCommand):
            ok = await _command_ready(spec.ready, proc, spec, bus)
        else:
            ok = True
        if ok:
            ctx.started(proc.pid)
        code = await proc.exited
    except BaseException:
        proc.kill_now()
        raise
    return proc.reason(code)
