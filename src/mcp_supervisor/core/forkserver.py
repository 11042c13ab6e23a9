"""A fork server: a Python process that has imported a module already (``ProcessSpec.template``) and starts an OS
child by ``fork`` instead of ``exec`` — so that a Python child does not pay the interpreter's start-up and its imports
at every (re)start, as ``multiprocessing``'s forkserver does. The template module may have a ``prepare(args)``
(:meth:`ForkServer.prepare`): the server calls it — say, to parse the config the daemon just loaded and import the
workers it names — and every child forked afterwards inherits what it prepared.

The daemon side (:class:`ForkServer`) starts the server (``python -m mcp_supervisor.core.forkmain``) on first
use, over a ``SOCK_SEQPACKET`` socket pair, and asks it for a child: the module, its ``argv``, environment, working
directory, umask, limits, user and group, cgroup, and three descriptors passed with ``SCM_RIGHTS`` (stdout and
stderr pipes, the control socket) that become fds 1, 2 and 3 of the child. The server forks; the child makes its own
session, takes the parent-death signal (the server's death kills it; the server dies with the daemon), joins its
cgroup, sets its limits, changes user and runs ``module.main(argv)`` (which names itself for ``ps``), whose
return value is its exit code. The server answers with the pid once the child leads its
own session (so that its group can be signalled at once) and tells each child's exit status (it is their parent),
which :class:`~mcp_supervisor.core.osprocess.ForkedProcess` reports as an exec'd child's.

A failed fork (the server cannot start, or dies) is an ``OSError``: the caller execs the command instead. The
server is a plain single-threaded loop (``selectors``), so a fork of it is safe; it never runs an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .escapes import OWN
from .launch import pdeathsig_preexec

_MAX_MESSAGE = 1 << 20
START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkRequest:
    """One child to fork: ``module.main(argv)`` with this environment and these limits and credentials."""

    module: str
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None = None
    umask: int | None = None
    limits: Mapping[str, int] = field(default_factory=dict)  # resource name (``nofile``, ``as``...) -> value
    ids: tuple[int, int, str | None] | None = None  # uid, gid, user name (for its groups)
    cgroup: str | None = None


class ForkServer:
    """The daemon's side: starts the server on first use, forks children through it, learns their exits."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._next = 0
        self._replies: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[tuple[int, bool]]] = {}
        self._early: dict[int, tuple[int, bool]] = {}  # exits told before their fork's answer was read
        self._preload: set[str] = set()
        self._prepared: dict[str, list[str]] = {}  # module -> the args of its last prepare()

    async def start(self, preload: Sequence[str] = ()) -> None:
        """Start the server (once) and have it import ``preload``; OSError when it cannot."""
        self._preload.update(preload)
        if self._sock is not None:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._popen = self._launch(theirs)
        except BaseException:
            ours.close()
            self._starting = None
            raise
        finally:
            theirs.close()
        OWN.add(self._popen.pid)  # ours to reap
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        ready: asyncio.Future[int] = loop.create_future()  # its first message: "id 0, my pid"
        self._replies[0] = ready
        loop.add_reader(ours, self._on_message, ours)
        self._sock = ours
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await ready
        except (TimeoutError, OSError) as e:
            self.close()
            raise OSError(f"the fork server did not start: {e}") from None
        finally:
            self._starting = None
        for module in self._prepared:  # a new server (the last one died) prepares as the last one did
            self._send_prepare(module)

    def _launch(self, theirs: socket.socket) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "mcp_supervisor.core.forkmain", str(theirs.fileno()), *sorted(self._preload)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            pass_fds=(theirs.fileno(),),
            preexec_fn=pdeathsig_preexec(os.getpid()),  # noqa: PLW1509 - prctl only
        )

    def _on_message(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(_MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            doc = json.loads(data)
            if "exit" in doc:
                pid, status = int(doc["exit"]), (int(doc["code"]), bool(doc.get("core")))
                fut = self._exits.pop(pid, None)
                if fut is None:
                    self._early[pid] = status
                elif not fut.done():
                    fut.set_result(status)
                continue
            reply = self._replies.pop(int(doc.get("id", -1)), None)
            if reply is None or reply.done():
                continue
            if "error" in doc:
                reply.set_exception(OSError(f"the fork server could not fork: {doc['error']}"))
            else:
                reply.set_result(int(doc.get("pid", 0)))

    async def prepare(self, module: str, args: Sequence[str]) -> None:
        """Have the server call ``module.prepare(args)`` (say, parse the config the daemon just loaded), so that every
        child forked from now on starts with what it prepared; a server that cannot is left as it was."""
        self._prepared[module] = list(args)  # and again by a server started after this one died
        fresh = self._sock is None
        await self.start((module,))
        if not fresh:  # (a server this call started has prepared already)
            self._send_prepare(module)

    def _send_prepare(self, module: str) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                doc = {"op": "prepare", "module": module, "args": self._prepared[module]}
                self._sock.send(json.dumps(doc).encode())

    async def fork(self, request: ForkRequest, fds: Sequence[int]) -> tuple[int, asyncio.Future[tuple[int, bool]]]:
        """Fork a child for ``request`` with ``fds`` as its 1, 2 (and 3): its pid and a future of its exit (the code
        as ``waitstatus_to_exitcode`` gives it, and whether it dumped core). OSError when the server cannot."""
        await self.start((request.module,))
        sock = self._sock
        if sock is None:
            raise OSError("the fork server is not running")
        loop = asyncio.get_running_loop()
        self._next += 1
        ident = self._next
        reply: asyncio.Future[int] = loop.create_future()
        self._replies[ident] = reply
        doc = {"id": ident, **dataclasses.asdict(request)}
        try:
            socket.send_fds(sock, [json.dumps(doc).encode()], list(fds))
            async with asyncio.timeout(START_TIMEOUT):
                pid = await reply
        except (OSError, TimeoutError) as e:
            self._replies.pop(ident, None)
            raise OSError(f"the fork server could not fork: {e}") from None
        exited: asyncio.Future[tuple[int, bool]] = loop.create_future()
        if pid in self._early:
            exited.set_result(self._early.pop(pid))
        else:
            self._exits[pid] = exited
        return pid, exited

    def close(self) -> None:
        """Stop using the server (it exits when its socket closes; its children die with it: killed)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock)
            sock.close()
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(OSError("the fork server ended"))
        self._replies.clear()
        for exit_fut in self._exits.values():
            if not exit_fut.done():
                exit_fut.set_result((-signal.SIGKILL, False))  # its parent-death signal
        self._exits.clear()
        popen, self._popen = self._popen, None
        if popen is not None:
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            with contextlib.suppress(ChildProcessError):
                popen.wait()
            OWN.discard(popen.pid)


# -- the server ----------------------------------------------------------------------------------------------------
def _become(doc: dict[str, Any], fds: list[int], server: int) -> None:
    """In a spare, once asked: become the process ``doc`` describes, run ``module.main(argv)``, exit with its value."""
    if doc.get("cgroup"):
        with open(os.path.join(doc["cgroup"], "cgroup.procs"), "w", encoding="ascii") as f:
            f.write("0")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for target, fd in enumerate(fds, start=1):
        os.dup2(fd, target)
    os.closerange(len(fds) + 1, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 20))  # the server's own
    os.environ.clear()
    os.environ.update(doc["env"])
    if doc.get("cwd"):
        os.chdir(doc["cwd"])
    if doc.get("umask") is not None:
        os.umask(int(doc["umask"]))
    for name, value in doc.get("limits", {}).items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name.upper()}"), (int(value), int(value)))
    if doc.get("ids"):
        uid, gid, user = doc["ids"]
        if user is not None:
            os.initgroups(user, gid)
        else:
            os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        pdeathsig_preexec(server)()  # a change of credentials clears it
    code = importlib.import_module(doc["module"]).main(list(doc["argv"]))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(int(code))


class _Server:
    """The server's loop. It keeps one *spare*: a child forked ahead of time that already leads its own session
    and waits to be told what to become — so a request costs a message, not a fork (the next spare is forked after
    the answer, off the requester's path)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.spare: tuple[int, socket.socket] | None = None
        self.retired: set[int] = set()  # spares replaced before use (they exit when their channel closes)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel = selectors.DefaultSelector()
        self.sel.register(sock, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)

    def fork_spare(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        gc.freeze()  # what the server has is never scanned by a child's collector: its pages stay shared, untouched
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (self.sock.fileno(), self.wake_r, self.wake_w, self.sel.fileno(), ours.fileno()):
                    os.close(fd)  # the daemon must see the server's end close when the server dies
                self.wait_as_spare(theirs)
            except BaseException as e:  # noqa: BLE001 - its stderr is the daemon's pipe (once asked): say why
                with contextlib.suppress(Exception):
                    os.write(2, f"mcp-supervisor: a forked child cannot start: {e!r}\n".encode())
            os._exit(126)
        theirs.close()
        self.spare = (pid, ours)

    def wait_as_spare(self, sock: socket.socket) -> None:
        os.setsid()
        pdeathsig_preexec(self.pid)()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        try:
            sock.send(b"ready")  # it leads its own session and group now: they can be signalled as its own
            msg, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
        except OSError:  # retired before it was used, or the server is gone
            msg, fds = b"", []
        if not msg:  # the server is gone, or it has no more use for a spare
            os._exit(0)
        sock.close()
        _become(json.loads(msg), fds, self.pid)

    def prepare(self, doc: dict[str, Any]) -> None:
        """``module.prepare(args)`` here, then a new spare: the next child has what it prepared."""
        try:
            importlib.import_module(doc["module"]).prepare(list(doc["args"]))
        except Exception as e:  # noqa: BLE001 - its children prepare for themselves, as before
            with contextlib.suppress(OSError):
                os.write(2, f"mcp-supervisor fork server: {doc['module']}.prepare failed: {e!r}\n".encode())
        if self.spare is not None:  # forked before: it goes (told nothing, it exits; its exit is nobody's)
            self.retired.add(self.spare[0])
            self.spare[1].close()
            self.spare = None

    def request(self, doc: dict[str, Any], fds: list[int]) -> None:
        try:
            importlib.import_module(doc["module"])  # once, here: every later spare has it
        except Exception as e:  # noqa: BLE001 - told to the daemon, which execs instead
            self.sock.send(json.dumps({"id": doc["id"], "error": f"cannot import {doc['module']}: {e}"}).encode())
            return
        for _ in range(2):
            if self.spare is None:
                self.fork_spare()
            assert self.spare is not None
            pid, channel = self.spare
            self.spare = None
            try:
                channel.settimeout(10.0)
                if channel.recv(16) != b"ready":  # not yet its own session leader: wait; gone: the next one
                    continue
                socket.send_fds(channel, [json.dumps(doc).encode()], fds)
            except OSError:  # that spare died: the next one
                continue
            finally:
                channel.close()
            self.sock.send(json.dumps({"id": doc["id"], "pid": pid}).encode())
            return
        self.sock.send(json.dumps({"id": doc["id"], "error": "no child could be forked"}).encode())

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare[0]:  # a spare died unused: nobody to tell
                self.spare[1].close()
                self.spare = None
                continue
            if pid in self.retired:
                self.retired.discard(pid)
                continue
            core = os.WIFSIGNALED(status) and os.WCOREDUMP(status)
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                self.sock.send(json.dumps({"exit": pid, "code": code, "core": core}).encode())

    def run(self) -> None:
        self.sock.send(json.dumps({"id": 0, "pid": self.pid}).encode())
        while True:
            if self.spare is None:
                self.fork_spare()
            for key, _ in self.sel.select():
                if key.fileobj is self.sock:
                    try:
                        msg, fds, _, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, 3)
                    except OSError:  # reset: the daemon closed its end with a message unread
                        msg, fds = b"", []
                    if not msg:  # the daemon is gone: so are we (our children follow by their death signal)
                        os._exit(0)
                    try:
                        doc = json.loads(msg)
                        if doc.get("op") == "prepare":
                            self.prepare(doc)
                        else:
                            self.request(doc, fds)
                    finally:
                        for f in fds:
                            os.close(f)
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                    self.reap()


def serve(fd: int, preload: Sequence[str]) -> None:
    """The server: import ``preload``, then fork on request and tell each exit until the daemon's end closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for module in preload:
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    _Server(socket.socket(fileno=fd)).run()
