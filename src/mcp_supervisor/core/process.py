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
import grp
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .cgroups import Cgroups
from .clock import wait_done
from .context import ChildContext
from .escapes import Escapes
from .events import NORMAL, EventBus, ExitReason, ProcessOutput
from .specs import RLIMITS, Liveness, ProcessSpec, ReadyCommand, ReadyTCP

_PR_SET_PDEATHSIG = 1
_MAX_LINE = 64 * 1024
_SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES",
                "MCP_FENCING_TOKEN")  # fmt: skip

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal, the guardian still covers us
    _prctl = None


_SETPRIV = shutil.which("setpriv")
_PRLIMIT = shutil.which("prlimit")
_BASH = shutil.which("bash")
_PAGE = os.sysconf("SC_PAGE_SIZE")


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


def _ids(spec: ProcessSpec) -> tuple[int, int] | None:
    """The uid and gid to run as (``user``, ``group``), or None to stay who we are; OSError names what is wrong."""
    if spec.user is None and spec.group is None:
        return None
    uid, gid = os.geteuid(), os.getegid()
    if spec.user is not None:
        try:
            entry = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
        except (KeyError, ValueError):
            raise LookupError(f"user {spec.user!r} does not exist on this host") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if spec.group is not None:
        try:
            gid = (grp.getgrgid(int(spec.group)) if spec.group.isdigit() else grp.getgrnam(spec.group)).gr_gid
        except (KeyError, ValueError):
            raise LookupError(f"group {spec.group!r} does not exist on this host") from None
    if os.geteuid() != 0 and (uid, gid) != (os.geteuid(), os.getegid()):
        raise PermissionError("running a child as another user or group needs the daemon to run as root")
    return uid, gid


def _preexec(parent_pid: int) -> Any:
    def set_pdeathsig() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the daemon died before prctl took effect
            os._exit(127)

    return set_pdeathsig


def _move_fds(fds: Sequence[int]) -> str:
    """Shell redirections that put ``fds`` at 3, 4, ... (by way of free numbers above all of them) and close the
    rest: the socket-activation layout, whatever numbers the sockets have in the daemon."""
    base = max(*fds, 2 + len(fds)) + 1
    temps = [base + i for i in range(len(fds))]
    first = " ".join(f"{t}<&{f}" for t, f in zip(temps, fds, strict=True))
    close_src = " ".join(f"{f}<&-" for f in fds if f not in temps)
    final = " ".join(f"{3 + i}<&{t}" for i, t in enumerate(temps))
    close_tmp = " ".join(f"{t}<&-" for t in temps)
    return f"exec {first}; exec {close_src}; exec {final} {close_tmp}"


def launch(
    spec: ProcessSpec, sockets: Mapping[str, Any], cgroup: str | None = None
) -> tuple[list[str], tuple[int, ...], Any]:
    """The command line, the descriptors to pass and the preexec function that start ``spec.command`` with its
    limits, user, parent-death signal and held sockets — each step an ``exec`` of the next, so that the program
    keeps the pid the first one had (LISTEN_PID must be the program's own pid).

    ``bash`` joins the child's cgroup, moves held sockets to fds 3.. and sets LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID
    (before anything it runs can fork); util-linux ``prlimit``
    sets the rlimits; ``setpriv`` changes user and group, then sets the parent-death signal (a change of
    credentials would clear it) and execs the program. Without setpriv we fall back to prctl in ``preexec_fn``
    (a full fork of the daemon, about 1.3 ms more per spawn).
    """
    argv = list(spec.command)
    preexec = None
    ids = _ids(spec)
    if _SETPRIV is not None:
        creds: list[str] = []
        if ids is not None:
            creds = ["--reuid", str(ids[0]), "--regid", str(ids[1])]
            creds += ["--init-groups"] if spec.user is not None else ["--clear-groups"]
        argv = [_SETPRIV, *creds, "--pdeathsig", "KILL", "--", *argv]
    elif ids is not None:
        raise FileNotFoundError("running a child as another user needs util-linux's setpriv, which is not installed")
    else:
        preexec = _preexec(os.getpid())
    if spec.limits:
        if _PRLIMIT is None:
            raise FileNotFoundError("limits need util-linux's prlimit, which is not installed")
        argv = [_PRLIMIT, *(f"--{RLIMITS[k]}={v}:{v}" for k, v in sorted(spec.limits.items())), "--", *argv]
    fds: tuple[int, ...] = ()
    prelude: list[str] = []
    if cgroup is not None:
        prelude.append(f"echo $$ > {shlex.quote(cgroup + '/cgroup.procs')} || exit 126")
    if spec.sockets:
        missing = [n for n in spec.sockets if n not in sockets]
        if missing:
            raise LookupError(f"socket {missing[0]!r} is not held by the daemon (see [[daemon.sockets]])")
        fds = tuple(sockets[n].fileno() for n in spec.sockets)
        names = ":".join(spec.sockets)
        prelude.append(_move_fds(fds))
        prelude.append(f'export LISTEN_FDS={len(fds)} LISTEN_FDNAMES="{names}" LISTEN_PID=$$')
    if prelude:
        if _BASH is None:
            raise FileNotFoundError("held sockets and cgroups need bash, which is not installed")
        argv = [_BASH, "-c", "; ".join([*prelude, 'exec "$@"']), "mcp-supervisor-exec", *argv]
    return argv, fds, preexec


def child_env(spec: ProcessSpec) -> dict[str, str]:
    """The environment of a child: ours (unless ``inherit_env`` is false) without systemd's private variables."""
    env = dict(os.environ) if spec.inherit_env else {}
    for key in _SCRUBBED_ENV:
        env.pop(key, None)
    env.update(spec.env)
    if spec.fencing_token is not None:
        env["MCP_FENCING_TOKEN"] = str(spec.fencing_token)
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

    def __init__(  # noqa: PLR0917
        self,
        popen: subprocess.Popen[bytes],
        path: str,
        bus: EventBus,
        guardian: Guardian | None,
        escapes: Escapes | None = None,
        stop_signal: int = signal.SIGTERM,
        cgroup: str | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.stop_signal = stop_signal
        self.cgroup = cgroup  # its own cgroup v2 (a delegated subtree), or None: the process group is the unit
        self.cause: str | None = None  # why we ended it ourselves (max_memory, liveness): an abnormal exit
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
    def spawn(  # noqa: PLR0917
        cls,
        spec: ProcessSpec,
        path: str,
        bus: EventBus,
        guardian: Guardian | None,
        escapes: Escapes | None = None,
        sockets: Mapping[str, Any] | None = None,
        cgroups: Cgroups | None = None,
    ) -> OsProcess:
        env = child_env(spec)
        resolve_program(spec, env)  # a clear start failure now, not an exit code from the exec later
        cgroup = cgroups.create(path) if cgroups is not None else None
        try:
            argv, fds, preexec = launch(spec, sockets or {}, cgroup)
        except BaseException:
            if cgroup is not None:
                Cgroups.remove(cgroup)
            raise
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
            close_fds=True,
            pass_fds=fds,
            umask=-1 if spec.umask is None else spec.umask,
            preexec_fn=preexec,  # noqa: PLW1509 - prctl only, no locks taken; None when setpriv does it
        )
        return cls(popen, path, bus, guardian, escapes, spec.stop_signal, cgroup)

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
        if self.cgroup is not None:
            Cgroups.kill(self.cgroup)  # and whatever left the group
            self._remove_cgroup(0)
        self._reap(block=True)

    def _remove_cgroup(self, tries: int) -> None:
        """Remove the emptied cgroup, once the killed processes have left it (retried for up to 10 s)."""
        assert self.cgroup is not None
        if not Cgroups.remove(self.cgroup) and tries < 200:
            self._loop.call_later(0.05, self._remove_cgroup, tries + 1)

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
        """The child's stop signal (``stop_signal``, SIGTERM unless it says otherwise) to its whole group."""
        self._signal(self.stop_signal)

    def end_for(self, cause: str, grace: float | None) -> None:
        """End it ourselves (a failed liveness check, too much memory): stop signal, SIGKILL after ``grace``; its
        exit is abnormal with ``cause`` as the reason, however it dies."""
        if self.exited.done() or self.cause is not None:
            return
        self.cause = cause
        self.terminate()
        if grace is not None:
            self._loop.call_later(grace, self.kill)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self.cgroup is not None and not self.exited.done():
            Cgroups.kill(self.cgroup)

    def kill_now(self) -> None:
        """SIGKILL the group and reap synchronously (teardown paths that cannot await)."""
        if self.exited.done():
            return
        self.kill()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._pidfd)
        self._reap(block=True)

    def reason(self, code: int) -> ExitReason:
        """Ended by us for a cause → abnormal; 0 → normal; death by a signal we sent → shutdown; else abnormal."""
        if self.cause is not None:
            return ExitReason("abnormal", self.cause)
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


async def _check_command(command: Sequence[str], spec: ProcessSpec, proc: OsProcess, bus: EventBus, what: str) -> int:
    """Run a check command in the child's environment (its own session, output discarded); its exit code."""
    check = subprocess.Popen(  # noqa: ASYNC220 - fork/exec returns at once; exit is awaited via pidfd
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(spec),
        cwd=spec.cwd,
        start_new_session=True,
        close_fds=True,
    )
    checker = OsProcess(check, f"{proc.path}#{what}", bus, None)
    try:
        return await checker.exited
    finally:
        checker.kill_now()  # a no-op once it exited; kills it when the caller gave up (timeout, cancel)


async def _command_ready(ready: ReadyCommand, proc: OsProcess, spec: ProcessSpec, bus: EventBus) -> bool:
    while not proc.exited.done():
        code = await _check_command(ready.command, spec, proc, bus, "ready")
        if code == 0:
            return True
        if await wait_done(None, proc.exited, ready.interval):
            break
    return False


def resident_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and every descendant still in its process group (``/proc``'s children lists)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) != pid:  # left the group (setsid): not ours to count
                continue
            total += int(fields[21]) * _PAGE
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", "rb") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


async def _watch_memory(spec: ProcessSpec, proc: OsProcess) -> None:
    """Two looks in a row above ``max_memory`` end the child (a single spike is forgiven)."""
    assert spec.max_memory is not None
    above = 0
    while not await wait_done(None, proc.exited, spec.memory_check):
        rss = resident_bytes(proc.pid)
        above = above + 1 if rss > spec.max_memory else 0
        if above >= 2:
            proc.end_for(f"max_memory: resident {_mib(rss)} above {_mib(spec.max_memory)}", spec.shutdown_timeout)
            return


async def _check_http(url: str) -> str | None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    fields = line.split()
    if len(fields) < 2 or not fields[1].isdigit():
        return "not an HTTP answer"
    status = int(fields[1])
    return None if 200 <= status < 400 else f"HTTP {status}"


async def _check(live: Liveness, proc: OsProcess, spec: ProcessSpec, bus: EventBus) -> str | None:
    """None when the check passed, else what failed."""
    try:
        async with asyncio.timeout(live.timeout):
            if live.http is not None:
                return await _check_http(live.http)
            if live.tcp is not None:
                _, writer = await asyncio.open_connection(*live.tcp)
                writer.close()
                return None
            assert live.command is not None
            code = await _check_command(live.command, spec, proc, bus, "live")
            return None if code == 0 else f"command exited with {code}"
    except TimeoutError:
        return f"no answer within {live.timeout:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__


async def _watch_liveness(spec: ProcessSpec, proc: OsProcess, bus: EventBus) -> None:
    """``failures`` failed checks in a row end the child as an abnormal exit with reason ``liveness``."""
    live = spec.live
    assert live is not None
    failed = 0
    while not await wait_done(None, proc.exited, live.every):
        problem = await _check(live, proc, spec, bus)
        failed = failed + 1 if problem is not None else 0
        if problem is not None and failed >= live.failures:
            proc.end_for(f"liveness: {failed} checks failed in a row (last: {problem})", spec.shutdown_timeout)
            return


async def run_process(  # noqa: PLR0917
    spec: ProcessSpec,
    path: str,
    ctx: ChildContext,
    bus: EventBus,
    guardian: Guardian | None,
    escapes: Escapes | None,
    on_spawn: Callable[[OsProcess], None],
    sockets: Mapping[str, Any] | None = None,
    cgroups: Cgroups | None = None,
) -> ExitReason:
    """The body of a process child's task: spawn (``on_spawn`` learns the process), wait for readiness, report
    ready, watch its memory and liveness, wait for the exit; its reason by the rules of :meth:`OsProcess.reason`."""
    proc = OsProcess.spawn(spec, path, bus, guardian, escapes, sockets, cgroups)
    on_spawn(proc)
    watchers: list[asyncio.Task[None]] = []
    try:
        if isinstance(spec.ready, ReadyTCP):
            ok = await _tcp_ready(spec.ready, proc)
        elif isinstance(spec.ready, ReadyCommand):
            ok = await _command_ready(spec.ready, proc, spec, bus)
        else:
            ok = True
        if ok:
            ctx.started(proc.pid)
            if spec.max_memory is not None:
                watchers.append(asyncio.ensure_future(_watch_memory(spec, proc)))
            if spec.live is not None:
                watchers.append(asyncio.ensure_future(_watch_liveness(spec, proc, bus)))
        code = await proc.exited
    except BaseException:
        proc.kill_now()
        raise
    finally:
        for w in watchers:
            w.cancel()
    return proc.reason(code)
