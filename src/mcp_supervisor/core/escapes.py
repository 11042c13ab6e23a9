"""Processes that escape their OS child's process group (``setsid``, double forks), found and stopped with it.

Stopping an OS child signals its process group. A descendant that called ``setsid`` is in another group, so it
would survive its child's stop, its restarts, and the daemon. Where no cgroup is available to kill a child's whole
subtree, this is the closest thing: the daemon is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so when an
escapee's parent dies it is re-parented to the daemon instead of to init; a scan of ``/proc`` (every 0.5 s, in a
thread, and soon after any child exits) attributes each escapee to the child it descends from; when that child
stops or exits its escapees are killed, and escapees re-parented to the daemon are reaped.

The window: a process that escapes *and* loses its parent within one scan is never attributed to a child; it is
killed when the tree stops (everything still parented to the daemon then is), and by the guardian if the daemon is
killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable
from typing import Any

SCAN_INTERVAL = 0.5
_PR_SET_CHILD_SUBREAPER = 36

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of init; False where the kernel cannot."""
    return _prctl is not None and _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, start time) of ``pid`` from ``/proc``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    return int(rest[1]), int(rest[2]), int(rest[19])


def scan_proc() -> dict[int, tuple[int, int, int]]:
    """Every process: pid -> (ppid, pgid, start time)."""
    out: dict[int, tuple[int, int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


class Escapes:
    """Tracks the escapees of the live OS children (leaders) of one tree; see the module docstring."""

    def __init__(self, on_kill: Callable[[str, int], None] | None = None) -> None:
        self.me = os.getpid()
        self.leaders: dict[int, str] = {}  # leader pid (= its pgid) -> child path
        self.escaped: dict[int, tuple[int, int]] = {}  # escapee pid -> (start time, leader pid)
        self.killed = 0
        self._on_kill = on_kill
        self._reaping: dict[int, int] = {}  # adopted pid -> its pidfd
        self._task: asyncio.Task[None] | None = None
        self._soon: asyncio.Event | None = None
        self._none_left: asyncio.Event | None = None
        self.exclude: set[int] = set()  # our own helpers (the guardian)
        # told of each escapee found and gone (the guardian, so that kill -9 of the daemon takes them too)
        self.on_escape: Callable[[int, int], None] | None = None
        self.on_gone: Callable[[int], None] | None = None

    def of(self, leader: int) -> list[int]:
        """The escapees attributed to the child whose leader is ``leader``."""
        return sorted(pid for pid, (_, lead) in self.escaped.items() if lead == leader)

    # -- the owner's calls ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._soon = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="escapes")

    def spawned(self, pid: int, path: str) -> None:
        self.leaders[pid] = path

    def ended(self, pid: int) -> None:
        """The leader ``pid`` exited (and its group was killed): its escapees go too."""
        self.leaders.pop(pid, None)
        for esc, (start, leader) in list(self.escaped.items()):
            if leader == pid:
                self._kill(esc, start)
        if self._soon is not None:
            self._soon.set()  # its orphans are re-parented to us now: look soon

    async def stop(self) -> None:
        """The tree has stopped: kill every escapee and whatever is still parented to us, and reap them."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        procs = await asyncio.to_thread(scan_proc)
        for esc, (start, _) in list(self.escaped.items()):
            self._kill(esc, start)
        for pid, (ppid, _, start) in procs.items():
            if ppid == self.me and pid not in self.exclude and pid not in self.leaders:
                self._kill(pid, start)
                self._adopt(pid)
        if self._reaping:  # SIGKILLed: they are gone in moments; bounded anyway
            self._none_left = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._none_left.wait()

    # -- scanning ------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._soon is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SCAN_INTERVAL):
                    await self._soon.wait()
                await asyncio.sleep(0.05)  # let a burst of exits settle into one scan
            self._soon.clear()
            self.update(await asyncio.to_thread(scan_proc))

    def update(self, procs: dict[int, tuple[int, int, int]]) -> None:
        """Attribute escapees to live leaders; kill (and reap) those whose leader is gone."""
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        for leader in list(self.leaders):
            stack = list(children.get(leader, ()))
            while stack:
                pid = stack.pop()
                stack += children.get(pid, ())
                _, pgid, start = procs[pid]
                if pgid != leader and pid not in self.escaped:
                    self.escaped[pid] = (start, leader)
                    if self.on_escape is not None:
                        self.on_escape(pid, start)
        for pid, (start, leader) in list(self.escaped.items()):
            st = procs.get(pid)
            if st is None or st[2] != start:
                del self.escaped[pid]  # gone
                if self.on_gone is not None:
                    self.on_gone(pid)
            elif st[0] == self.me:  # re-parented to us: ours to reap, and dead if its child is
                self._adopt(pid)
                if leader not in self.leaders:
                    self._kill(pid, start)

    # -- killing and reaping -------------------------------------------------------------------------------
    def _kill(self, pid: int, start: int) -> None:
        st = _stat(pid)
        if st is None or st[2] != start:
            self.escaped.pop(pid, None)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if st[1] == pid:
                os.killpg(pid, signal.SIGKILL)  # it leads a group of its own: all of it
            else:
                os.kill(pid, signal.SIGKILL)
        self.killed += 1
        leader = self.escaped.pop(pid, (0, 0))[1]
        if self.on_gone is not None:
            self.on_gone(pid)
        if self._on_kill is not None:
            self._on_kill(self.leaders.get(leader, ""), pid)

    def _adopt(self, pid: int) -> None:
        if pid in self._reaping:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        self._reaping[pid] = fd
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().add_reader(fd, self._reap, pid)

    def _reap(self, pid: int) -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        self._forget(pid)

    def _forget(self, pid: int) -> None:
        fd = self._reaping.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        if not self._reaping and self._none_left is not None:
            self._none_left.set()
