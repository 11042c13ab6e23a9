"""One running OS process: its exit (a pidfd in the loop's selector, the same on asyncio and uvloop), its output
line by line, its group's stop — or, for a program that daemonizes itself, the process its pidfile names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from .cgroups import Cgroups
from .escapes import OWN, Escapes
from .events import EventBus, ExitKind, ExitReason, ProcessOutput
from .forensics import TAIL_LINES
from .forkserver import ForkRequest, ForkServer
from .guardian import Guardian
from .launch import child_env, ids_of, launch, resolve_program
from .resources import MemCgroup, Usage
from .specs import RLIMITS, ProcessSpec

_MAX_LINE = 64 * 1024


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return pid


def start_time(pid: int) -> int | None:
    """``pid``'s start time in clock ticks since boot (what tells a reused pid apart), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2 :].split()[19])


def signal_group(pgid: int, sig: int, pid: int) -> None:
    """``killpg``, never on a group that is not a child's own — 0 (ours), 1 (killpg(1) is kill(-1): every process
    there is) or the daemon's group, where an adopted process (a pidfile's) may sit: then the process alone."""
    if pgid <= 1 or pgid == os.getpgrp():
        if pid > 1:
            os.kill(pid, sig)
        return
    os.killpg(pgid, sig)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class OsProcess:
    """One running OS process: the leader of its own process group and session (one we launched), or — a program
    that daemonizes itself — the process its pidfile names (:meth:`adopt`)."""

    def __init__(  # noqa: PLR0917
        self,
        popen: subprocess.Popen[bytes] | None,
        path: str,
        bus: EventBus,
        guardian: Guardian | None,
        escapes: Escapes | None = None,
        stop_signal: int = signal.SIGTERM,
        cgroup: str | None = None,
        pid: int | None = None,
        pipes: Sequence[tuple[str, Any]] = (),
    ) -> None:
        loop = asyncio.get_running_loop()
        self.stop_signal = stop_signal
        self.cgroup = cgroup  # its own cgroup v2 (a delegated subtree), or None: the process group is the unit
        self.cause: str | None = None  # why we ended it ourselves (max_memory, liveness): an abnormal exit
        self.ended_by: str | None = None  # which of our checks that was ("max_memory", "liveness")
        self.core_dumped = False
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)  # its last output lines, for the exit record
        self.kill_group_on_exit = True  # a launcher whose program daemonized itself leaves its group alone
        self.control: socket.socket | None = None  # our end of its control channel (ProcessSpec.control)
        self.exit_reasons: Mapping[int, tuple[str, str]] = {}  # ProcessSpec.exit_reasons
        self._escapes = escapes
        self._loop = loop
        self._popen = popen
        self.pid = popen.pid if popen is not None else pid if pid is not None else -1
        self.pgid = self.pid if popen is not None else _pgid(self.pid)
        self.started_ticks = start_time(self.pid)  # when it started (clock ticks since boot)
        OWN.add(self.pid)  # its exit status is ours to read (a subreaper's scan leaves it alone)
        self.path = path
        self._bus = bus
        self._guardian = guardian
        self.signals_sent: set[int] = set()
        self._line_waiters: list[tuple[re.Pattern[str], asyncio.Future[str]]] = []
        self.exited: asyncio.Future[int] = loop.create_future()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:  # gone already (a forked child that failed at once): its status is on its way
            self._pidfd = -1
            loop.call_soon(self._on_exit)
        else:
            loop.add_reader(self._pidfd, self._on_exit)
        self._streams: dict[int, tuple[str, bytearray, Any]] = {}  # fd -> (stream, partial line, the pipe)
        if popen is not None:
            pipes = (("stdout", popen.stdout), ("stderr", popen.stderr))
        for name, pipe in pipes:
            if pipe is not None:
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                self._streams[fd] = (name, bytearray(), pipe)
                loop.add_reader(fd, self._on_output, fd)
        self._own_group = self.pgid == self.pid  # an adopted (pidfile) process may sit in a group that is not its own
        if guardian is not None:
            if self._own_group:
                guardian.register(self.pgid)
            elif (start := start_time(self.pid)) is not None:
                guardian.register_pid(self.pid, start)  # this process alone: never a group it does not lead
        self.usage = escapes.spawned(self.pid, path) if escapes is not None else Usage()
        if cgroup is not None and pipes:  # one we launched, in a cgroup made for it: every OOM kill in it is its
            self.usage.own_cgroup_at(MemCgroup(cgroup, v2=True))

    @classmethod
    def adopt(  # noqa: PLR0917
        cls,
        pid: int,
        launcher: OsProcess,
        bus: EventBus,
        guardian: Guardian | None,
        escapes: Escapes | None,
        stop_signal: int,
    ) -> OsProcess:
        """The process a pidfile names, once the command that started it (``launcher``) exited: re-parented to
        us (we are a child subreaper), so its exit status is ours; it takes over the launcher's output pipes."""
        proc = cls(None, launcher.path, bus, guardian, escapes, stop_signal, launcher.cgroup, pid)
        for fd, (name, buf, pipe) in launcher._streams.items():
            launcher._loop.remove_reader(fd)
            proc._streams[fd] = (name, buf, pipe)
            proc._loop.add_reader(fd, proc._on_output, fd)
        launcher._streams = {}
        proc.tail.extend(launcher.tail)
        return proc

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
        ours = theirs = None
        try:
            argv, fds, preexec = launch(spec, sockets or {}, cgroup)
            if spec.control:  # its end keeps its number (pass_fds): the process finds it in MCP_CONTROL_FD
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                fds = (*fds, theirs.fileno())
                env["MCP_CONTROL_FD"] = str(theirs.fileno())
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
        except BaseException:
            if cgroup is not None:
                Cgroups.remove(cgroup)
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        proc = cls(popen, path, bus, guardian, escapes, spec.stop_signal, cgroup)
        proc.control = ours
        return proc

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

    def wait_line(self, pattern: str) -> asyncio.Future[str]:
        """A future for the first output line from now on that ``pattern`` finds (readiness by output)."""
        fut: asyncio.Future[str] = self._loop.create_future()
        self._line_waiters.append((re.compile(pattern), fut))
        return fut

    def _feed(self, fd: int, data: bytes) -> None:
        name, buf, _ = self._streams[fd]
        if not self._bus.active and not self._line_waiters:
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
        self.tail.append(line[:500])
        if self._line_waiters:
            for waiter in [w for w in self._line_waiters if w[1].done() or w[0].search(line)]:
                self._line_waiters.remove(waiter)
                if not waiter[1].done():
                    waiter[1].set_result(line)
        if self._bus.active:
            self._bus.emit(ProcessOutput(path=self.path, stream=stream, line=line, pid=self.pid))  # type: ignore[arg-type]

    def _close_stream(self, fd: int) -> None:
        entry = self._streams.pop(fd, None)
        if entry is None:
            return
        self._loop.remove_reader(fd)
        name, buf, pipe = entry
        if buf and self._bus.active:
            self._emit(name, bytes(buf))
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
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
        # Kill the rest of the group while the leader is a zombie: its pgid cannot be reused until we reap it.
        if self.kill_group_on_exit:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal_group(self.pgid, signal.SIGKILL, self.pid)
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
        self._ended(os.waitstatus_to_exitcode(status), os.WIFSIGNALED(status) and os.WCOREDUMP(status))

    def _ended(self, code: int, core_dumped: bool) -> None:
        """Its exit status is known (reaped): release what watched it, then say so (``exited``)."""
        OWN.discard(self.pid)
        self.core_dumped = core_dumped
        if self._popen is not None:
            self._popen.returncode = code
        with contextlib.suppress(OSError):
            os.close(self._pidfd)
        if self.kill_group_on_exit:  # a launcher's pipes go on to the process it started
            self._drain()
        if self._guardian is not None:
            if self._own_group:
                self._guardian.unregister(self.pgid)
            else:
                self._guardian.unregister_pid(self.pid)
        if self._escapes is not None:
            self._escapes.ended(self.pid)
        self.exited.set_result(code)

    def _signal(self, sig: int) -> None:
        if self.exited.done():
            return
        self.signals_sent.add(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal_group(self.pgid, sig, self.pid)

    def send(self, sig: int, group: bool = False) -> None:
        """An operator's signal (``ctl signal``): to the process, or its whole group. Not one of the supervisor's
        own, so a death it causes is abnormal (``killed by SIGx``)."""
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                signal_group(self.pgid, sig, self.pid)
            else:
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        """The child's stop signal (``stop_signal``, SIGTERM unless it says otherwise) to its whole group."""
        self._signal(self.stop_signal)

    def end_for(self, by: str, cause: str, grace: float | None) -> None:
        """End it ourselves (``by`` a failed liveness check, too much memory): stop signal, SIGKILL after
        ``grace``; its exit is abnormal with ``cause`` as the reason, however it dies."""
        if self.exited.done() or self.cause is not None:
            return
        self.cause = cause
        self.ended_by = by
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
        self._reap_killed()

    def _reap_killed(self) -> None:
        self._reap(block=True)

    def reason(self, code: int) -> ExitReason:
        """Ended by us for a cause → abnormal; after a stop signal we sent → shutdown, however it ended (a program
        that handles SIGTERM exits with a code of its own: ``stopped by SIGTERM (exit code 0)``); else 0 → normal;
        a signal → abnormal (``killed by SIGKILL``); any other code → abnormal."""
        sig = _signal_name(-code) if code < 0 else None

        def end(kind: ExitKind, detail: str = "", by: str | None = None) -> ExitReason:
            return ExitReason(kind, detail, code if code >= 0 else None, sig, self.core_dumped, by)

        if self.cause is not None:
            return end("abnormal", self.cause, self.ended_by)
        if code < 0 and -code in self.signals_sent:
            return end("shutdown", f"stopped by {sig}")
        stop = next((s for s in (self.stop_signal, signal.SIGKILL) if s in self.signals_sent), None)
        if stop is not None:
            return end("shutdown", f"stopped by {_signal_name(stop)} (exit code {code})")
        told = self.exit_reasons.get(code)
        if told is not None:  # a code that stands for a reason (an isolated supervisor that gave up: shutdown)
            return end(told[0], told[1])  # type: ignore[arg-type]
        if code == 0:
            return end("normal")
        if code < 0:
            return end("abnormal", f"killed by {sig}" + (" (core dumped)" if self.core_dumped else ""))
        return end("abnormal", f"exit code {code}")


class ForkedProcess(OsProcess):
    """An OS child forked by a fork server from a template that imported its module already
    (``ProcessSpec.template``): the server is its parent, so its exit status comes from the server, not from
    ``waitpid``; otherwise an OS child like any other (its own session and group, pipes, guardian, cgroup)."""

    def __init__(  # noqa: PLR0917
        self,
        pid: int,
        status: asyncio.Future[tuple[int, bool]],
        pipes: Sequence[tuple[str, Any]],
        path: str,
        bus: EventBus,
        guardian: Guardian | None,
        escapes: Escapes | None,
        stop_signal: int,
        cgroup: str | None,
    ) -> None:
        self._status = status
        super().__init__(None, path, bus, guardian, escapes, stop_signal, cgroup, pid, pipes)

    @classmethod
    async def fork(  # noqa: PLR0917
        cls,
        server: ForkServer,
        spec: ProcessSpec,
        path: str,
        bus: EventBus,
        guardian: Guardian | None,
        escapes: Escapes | None = None,
        cgroups: Cgroups | None = None,
    ) -> ForkedProcess:
        """Fork ``spec`` (``template.main(command[3:])``) from ``server``; OSError when the server cannot (the
        caller execs the command instead)."""
        assert spec.template is not None
        env = child_env(spec)
        ids = ids_of(spec)
        cgroup = cgroups.create(path) if cgroups is not None else None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours = theirs = None
        fds = [out_w, err_w]
        if spec.control:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds.append(theirs.fileno())
            env["MCP_CONTROL_FD"] = "3"
        request = ForkRequest(
            module=spec.template, argv=list(spec.command[3:]), env=env, cwd=spec.cwd, umask=spec.umask,
            limits={RLIMITS[k]: v for k, v in spec.limits.items()}, cgroup=cgroup,
            ids=(ids[0], ids[1], spec.user if spec.user is not None and not spec.user.isdigit() else None)
            if ids is not None else None,
        )  # fmt: skip
        try:
            pid, status = await server.fork(request, fds)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            if ours is not None:
                ours.close()
            if cgroup is not None:
                Cgroups.remove(cgroup)
            raise
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
            if theirs is not None:
                theirs.close()
        with contextlib.suppress(ProcessLookupError):  # (gone already: its status is on its way)
            if os.getpgid(pid) != pid:  # never: a spare leads its own group before it is handed out
                os.kill(pid, signal.SIGKILL)
                raise OSError(f"the forked child {pid} does not lead its own process group")
        pipes = [("stdout", os.fdopen(out_r, "rb", buffering=0)), ("stderr", os.fdopen(err_r, "rb", buffering=0))]
        proc = cls(pid, status, pipes, path, bus, guardian, escapes, spec.stop_signal, cgroup)
        proc.control = ours
        return proc

    def _reap(self, block: bool) -> None:
        if self.exited.done():
            return
        if self._status.done():
            code, core = self._status.result()
            self._ended(code, core)
        elif block:  # it has exited: the server tells its status in a moment
            self._status.add_done_callback(lambda _: self._reap(False))

    def _reap_killed(self) -> None:  # its status comes later, from the server: it was killed
        self._ended(-signal.SIGKILL, False)
