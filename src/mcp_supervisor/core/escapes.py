"""The descendants of OS children: those that leave their child's process group (``setsid``, double forks) are
stopped with it, and every process the kernel re-parents to the daemon is reaped — no zombie stays.

The daemon is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): when a descendant's parent dies (a pre-fork
server's master killed, a shell wrapper stopped) the descendant is re-parented to the daemon instead of to init, so
the daemon must wait for it. A scan of ``/proc`` (every 0.5 s, in a thread, and soon after any child exits) knows
each child's descendants (its *lineage*), and so recognises a re-parented one: it was seen below a child, or it is
still in a child's process group (current or recently ended). Such a process is *adopted*: reaped at once if it is a
zombie already, else watched through a pidfd and reaped when it exits. The processes the daemon launched itself
(:data:`OWN`) are never touched: their own watchers read their exit status. When the daemon runs as PID 1 (a
container) it also reaps orphans from anywhere (any process group but its own).

*Detached* descendants — those in another process group — are listed with their child (``/status``) and killed
when that child stops, exits or restarts; a warning names the child when one had to be (a zombie is never
"killed", only reaped). The window: a process that leaves its group *and* loses its parent within one scan is not
attributed to a child; it is killed when the tree stops, and by the guardian if the daemon is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from .resources import Meter, Stat, Usage, count_fds

SCAN_INTERVAL = 0.5
RECENT = 60.0  # seconds an ended child's process group is remembered (its members may die later)
_PR_SET_CHILD_SUBREAPER = 36

OWN: set[int] = set()
"""Processes this daemon launched and waits for itself (OS children, check commands, the guardian)."""

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of init; False where the kernel cannot."""
    return _prctl is not None and _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _stat(pid: int, fds: bool = False) -> Stat | None:
    """``pid``'s parent, group, start time, state and usage from ``/proc``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    return Stat(int(rest[1]), int(rest[2]), int(rest[19]), rest[0] == b"Z", int(rest[11]) + int(rest[12]),
                int(rest[13]) + int(rest[14]), int(rest[17]), int(rest[21]),
                count_fds(pid) if fds else None)  # fmt: skip


def scan_proc(fd_groups: frozenset[int] = frozenset()) -> dict[int, Stat]:
    """Every process; the file descriptors counted for those in the process groups ``fd_groups``."""
    out: dict[int, Stat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                if st.pgid in fd_groups and not st.zombie:
                    st = st._replace(fds=count_fds(int(name)))
                out[int(name)] = st
    return out


class Escapes:
    """The descendants of the live OS children (leaders) of one tree; see the module docstring."""

    def __init__(self, on_kill: Callable[[str, int], None] | None = None) -> None:
        self.me = os.getpid()
        self.my_pgid = os.getpgid(0)
        self.init = self.me == 1  # PID 1: every orphan of the container comes to us
        self.leaders: dict[int, str] = {}  # leader pid (= its pgid) -> child path
        self.escaped: dict[int, tuple[int, int]] = {}  # detached descendant pid -> (start time, leader pid)
        self.lineage: dict[int, tuple[int, int]] = {}  # every descendant seen: pid -> (start time, leader pid)
        self.ended_groups: dict[int, tuple[str, float]] = {}  # an ended leader's pgid -> (child path, when)
        self.killed = 0
        self.reaped = 0  # re-parented processes waited for
        self._on_kill = on_kill
        self.meter = Meter()  # what each child uses, summed from the same scans
        self._reaping: dict[int, int] = {}  # adopted pid -> its pidfd
        self._task: asyncio.Task[None] | None = None
        self._soon: asyncio.Event | None = None
        self._none_left: asyncio.Event | None = None
        self.exclude: set[int] = set()  # our own helpers (the guardian)
        # told of each detached descendant found and gone (the guardian: kill -9 of the daemon takes them too)
        self.on_escape: Callable[[int, int], None] | None = None
        self.on_gone: Callable[[int], None] | None = None

    def of(self, leader: int) -> list[int]:
        """The detached descendants attributed to the child whose leader is ``leader``."""
        return sorted(pid for pid, (_, lead) in self.escaped.items() if lead == leader)

    # -- the owner's calls ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._soon = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="escapes")

    def spawned(self, pid: int, path: str) -> Usage:
        """A new leader: its usage is summed from the next scan on, which comes soon (a program may move itself
        into a memory cgroup as it starts: the meter should see it there before anything happens)."""
        self.leaders[pid] = path
        if self._soon is not None:
            self._soon.set()
        return self.meter.track(pid)

    def ended(self, pid: int) -> None:
        """The leader ``pid`` exited (and its group was killed): its detached descendants go too."""
        path = self.leaders.pop(pid, "")
        self.meter.forget(pid)
        self.ended_groups[pid] = (path, time.monotonic())
        for esc, (start, leader) in list(self.escaped.items()):
            if leader == pid:
                self._kill(esc, start, path)
        if self._soon is not None:
            self._soon.set()  # its orphans are re-parented to us now: look soon

    async def stop(self) -> None:
        """The tree has stopped: kill every detached descendant and whatever is still parented to us, and reap."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        procs = await asyncio.to_thread(scan_proc)
        for esc, (start, leader) in list(self.escaped.items()):
            self._kill(esc, start, self._path_of(leader))
        for pid, st in procs.items():
            if st.ppid == self.me and self._not_ours_to_leave(pid):
                if not st.zombie:
                    self._kill(pid, st.start, self._child_of(pid, st))
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
            fd_groups = frozenset(self.leaders) if self.meter.counting_fds() else frozenset()
            self.update(await asyncio.to_thread(scan_proc, fd_groups))

    def update(self, procs: dict[int, Stat]) -> None:  # noqa: C901, PLR0912 - one pass over the process table; splitting it would read /proc twice
        """Learn each child's descendants; adopt (reap) the re-parented ones; kill the detached ones whose child is
        gone."""
        now = time.monotonic()
        for pgid, (_, when) in list(self.ended_groups.items()):
            if now - when > RECENT:
                del self.ended_groups[pgid]
        children: dict[int, list[int]] = {}
        for pid, st in procs.items():
            children.setdefault(st.ppid, []).append(pid)
        for leader in list(self.leaders):
            stack = list(children.get(leader, ()))
            while stack:
                pid = stack.pop()
                stack += children.get(pid, ())
                st = procs[pid]
                self.lineage[pid] = (st.start, leader)
                if st.pgid != leader and pid not in self.escaped and not st.zombie:
                    self.escaped[pid] = (st.start, leader)
                    if self.on_escape is not None:
                        self.on_escape(pid, st.start)
        for pid in [p for p, (start, _) in self.lineage.items() if p not in procs or procs[p].start != start]:
            del self.lineage[pid]
        for pid, (start, leader) in list(self.escaped.items()):
            seen = procs.get(pid)
            if seen is None or seen.start != start:
                del self.escaped[pid]  # gone
                if self.on_gone is not None:
                    self.on_gone(pid)
            elif leader not in self.leaders and not seen.zombie:
                self._kill(pid, start, self._path_of(leader))
        for pid in children.get(self.me, ()):
            st = procs[pid]
            if self._not_ours_to_leave(pid) and self._descends_from_a_child(pid, st):
                self._adopt(pid)
        self.meter.update(procs, self._members(procs))

    def _members(self, procs: dict[int, Stat]) -> dict[int, list[int]]:
        """Each leader's processes: its process group and its detached descendants."""
        out: dict[int, list[int]] = {leader: [] for leader in self.leaders}
        for pid, st in procs.items():
            if st.pgid in out:
                out[st.pgid].append(pid)
        for pid, (_, leader) in self.escaped.items():
            if leader in out and procs.get(pid) is not None and procs[pid].pgid != leader:
                out[leader].append(pid)
        return out

    def _not_ours_to_leave(self, pid: int) -> bool:
        """Not a process we launched ourselves (its own watcher reaps it) nor a helper of ours."""
        return pid not in self.leaders and pid not in OWN and pid not in self.exclude

    def _descends_from_a_child(self, pid: int, st: Stat) -> bool:
        lineage = self.lineage.get(pid)
        if lineage is not None and lineage[0] == st.start:
            return True
        if st.pgid in self.leaders or st.pgid in self.ended_groups:
            return True
        return self.init and st.pgid != self.my_pgid  # PID 1: an orphan from anywhere else is ours too

    def _path_of(self, leader: int) -> str:
        return self.leaders.get(leader) or self.ended_groups.get(leader, ("", 0.0))[0]

    def _child_of(self, pid: int, st: Stat) -> str:
        lineage = self.lineage.get(pid)
        if lineage is not None and lineage[0] == st.start:
            return self._path_of(lineage[1])
        return self._path_of(st.pgid)

    # -- killing and reaping -------------------------------------------------------------------------------
    def _kill(self, pid: int, start: int, path: str) -> None:
        """SIGKILL a live descendant that outlived its child (``path``); a zombie is only reaped, never reported."""
        st = _stat(pid)
        if st is None or st.start != start or st.zombie:
            if self.escaped.pop(pid, None) is not None and self.on_gone is not None:
                self.on_gone(pid)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if st.pgid == pid and pid > 1:
                os.killpg(pid, signal.SIGKILL)  # it leads a group of its own: all of it
            else:
                os.kill(pid, signal.SIGKILL)
        self.killed += 1
        self.escaped.pop(pid, None)
        if self.on_gone is not None:
            self.on_gone(pid)
        if self._on_kill is not None and path:  # one that outlived its child; an orphan of nobody's is just ended
            self._on_kill(path, pid)

    def _adopt(self, pid: int) -> None:
        if pid in self._reaping:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        self._reaping[pid] = fd
        with contextlib.suppress(RuntimeError):  # no loop (a teardown): reaped below if it is done
            asyncio.get_running_loop().add_reader(fd, self._reap, pid)
        self._reap(pid, block=False)  # a zombie already: now

    def _reap(self, pid: int, block: bool = True) -> None:
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except (ChildProcessError, OSError):
            done = pid  # not ours any more (or already reaped)
        if done == 0:
            return  # still running: the pidfd says when it ends
        if done == pid:
            self.reaped += 1
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
