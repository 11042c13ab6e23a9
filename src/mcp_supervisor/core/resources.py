"""What each OS child uses: CPU seconds, resident memory (now and peak), open file descriptors, threads — summed
over its process group and the descendants that left it — and what its memory cgroup says about OOM kills.

Nothing here reads ``/proc`` on its own schedule: the descendant tracker's scan (``escapes.py``, every 0.5 s in a
thread) reads every process's ``stat`` once, and :meth:`Meter.update` sums it per child; file descriptors are
counted on every tenth scan, in the same thread. The memory cgroup of each child's leader is looked up on each
scan (a program may move itself into one after it starts) and its ``oom_kill`` counter is read when it is first
seen and when the child ends (``memory.events`` on cgroup v2, ``memory.oom_control`` on v1).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
SPARK = 60  # resident-memory samples kept per child (one per FD_EVERY scans: about five minutes)
FD_EVERY = 10  # scans between two counts of file descriptors (and two sparkline samples)
UNLIMITED = 1 << 60  # v1 reports "no limit" as a page-rounded LONG_MAX


class MemCgroup(NamedTuple):
    """A memory cgroup: its directory and its version's file names."""

    dir: str
    v2: bool

    def _read(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.dir, name), encoding="ascii") as f:
                return f.read(4096)
        except OSError:
            return None

    def oom_kills(self) -> int | None:
        text = self._read("memory.events" if self.v2 else "memory.oom_control")
        if text is None:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None

    def limit(self) -> int | None:
        text = self._read("memory.max" if self.v2 else "memory.limit_in_bytes")
        if text is None or not text.strip().isdigit():
            return None  # "max", or unreadable
        value = int(text)
        return value if value < UNLIMITED else None

    def peak(self) -> int | None:
        text = self._read("memory.peak" if self.v2 else "memory.max_usage_in_bytes")
        return int(text) if text is not None and text.strip().isdigit() else None


@functools.cache
def _mounts() -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(root, mount point) of the cgroup v2 hierarchy and of the v1 memory controller, if mounted."""
    v2 = v1 = None
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            if tail[0] == "cgroup2" and v2 is None:
                v2 = (fields[3], fields[4])
            elif tail[0] == "cgroup" and "memory" in tail[2].split(",") and v1 is None:
                v1 = (fields[3], fields[4])
    return v2, v1


def _under(mount: tuple[str, str], path: str) -> str:
    root, point = mount
    rel = path[len(root) :] if root != "/" and path.startswith(root) else path
    return os.path.join(point, rel.lstrip("/"))


def memory_cgroup(pid: int) -> MemCgroup | None:
    """The memory cgroup ``pid`` is in, where the memory controller is available (None elsewhere)."""
    v2, v1 = _mounts()
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and v2 is not None:
            cg = MemCgroup(_under(v2, path), True)
            if os.path.exists(os.path.join(cg.dir, "memory.events")):
                return cg
        elif "memory" in controllers.split(",") and v1 is not None:
            return MemCgroup(_under(v1, path), False)
    return None


@dataclass(slots=True)
class Usage:
    """One incarnation of an OS child, as the scans saw it (written by the meter, read by the status and the exit
    record)."""

    cpu_s: float = 0.0
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    fds: int | None = None
    threads: int = 0
    processes: int = 0
    cgroup: MemCgroup | None = None
    oom_base: int | None = None  # the cgroup's oom_kill counter when this child was first seen in it
    own_cgroup: bool = False
    rss_samples: deque[int] = field(default_factory=lambda: deque(maxlen=SPARK))

    def own_cgroup_at(self, cg: MemCgroup) -> None:
        """The child has a memory cgroup of its own (the daemon made it): count OOM kills from now."""
        if cg.oom_kills() is not None:
            self.cgroup, self.oom_base, self.own_cgroup = cg, cg.oom_kills(), True

    def oom_kills(self) -> int:
        """OOM kills its memory cgroup counted since the child was first seen in it."""
        if self.cgroup is None or self.oom_base is None:
            return 0
        now = self.cgroup.oom_kills()
        return max(0, now - self.oom_base) if now is not None else 0

    def memory_limit(self, *limits_set: int | None) -> int | None:
        """The nearest known limit on its memory: its cgroup's, or one the child's spec sets."""
        limits = [x for x in (self.cgroup.limit() if self.cgroup is not None else None, *limits_set) if x]
        return min(limits) if limits else None

    def peak(self) -> int:
        """The peak resident memory: the cgroup's own count when the cgroup is the child's, else the samples'."""
        if self.own_cgroup and self.cgroup is not None:
            return max(self.peak_rss_bytes, self.cgroup.peak() or 0)
        return self.peak_rss_bytes


class Stat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` the tracker and the meter use."""

    ppid: int
    pgid: int
    start: int  # clock ticks since boot: with the pid, it names one process (pids are reused)
    zombie: bool
    ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime: children it waited for
    threads: int
    rss_pages: int
    fds: int | None = None  # counted only on some scans, for the processes of a child


class Meter:
    """Sums each child's processes from one scan; keeps a :class:`Usage` per live child's leader."""

    def __init__(self) -> None:
        self.usage: dict[int, Usage] = {}  # leader pid -> its incarnation's usage
        self.scans = 0
        self._my_cgroup: MemCgroup | bool | None = False  # False: not looked up yet

    def track(self, leader: int) -> Usage:
        usage = self.usage[leader] = Usage()
        return usage

    def forget(self, leader: int) -> None:
        self.usage.pop(leader, None)

    def counting_fds(self) -> bool:
        """Whether the coming scan counts file descriptors."""
        return self.scans % FD_EVERY == 0

    def update(self, procs: dict[int, Stat], members: dict[int, list[int]]) -> None:
        """``members``: leader pid -> its processes (its group and its detached descendants)."""
        self.scans += 1
        counted_fds = (self.scans - 1) % FD_EVERY == 0
        for leader, usage in self.usage.items():
            pids = [p for p in members.get(leader, ()) if p in procs]
            if not pids:
                continue
            stats = [procs[p] for p in pids]
            lead = procs.get(leader)
            ticks = sum(s.ticks for s in stats) + (lead.child_ticks if lead is not None else 0)
            usage.cpu_s = max(usage.cpu_s, ticks / TICK)
            usage.rss_bytes = sum(s.rss_pages for s in stats if not s.zombie) * PAGE
            usage.peak_rss_bytes = max(usage.peak_rss_bytes, usage.rss_bytes)
            usage.threads = sum(s.threads for s in stats if not s.zombie)
            usage.processes = sum(1 for s in stats if not s.zombie)
            if counted_fds:
                usage.fds = sum(s.fds or 0 for s in stats)
                usage.rss_samples.append(usage.rss_bytes)
            self._place(leader, usage)

    def _place(self, leader: int, usage: Usage) -> None:
        cg = memory_cgroup(leader)
        if cg is None or cg == usage.cgroup or (usage.own_cgroup and usage.cgroup is not None):
            return
        if self._my_cgroup is False:
            self._my_cgroup = memory_cgroup(os.getpid())
        usage.cgroup = cg
        usage.oom_base = cg.oom_kills()
        usage.own_cgroup = cg != self._my_cgroup


def count_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
