"""The guardian: a helper process that SIGKILLs what the daemon leaves behind when the daemon's end of its pipe
closes — which happens even on ``kill -9`` of the daemon.

This file is both sides. :class:`Guardian` (the daemon's) starts it as ``python3 -I -S <this file>``, so that
``ps`` names it; run that way it is the helper (:func:`main`): standard library only, no site packages. It kills
every process group the daemon registered, every descendant of those groups' leaders it has seen in its scans of
``/proc`` (every 0.5 s, so processes that left their group with ``setsid`` go too), and the detached processes the
daemon told it about — and nothing else: not the daemon's other children, nor the daemon's ancestors (were the daemon
killed before this helper read its parent's pid, that parent would be init, and "its descendants" everything).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent, start time, process group)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    return int(rest[1]), int(rest[19]), int(rest[2])


def _scan(roots: set[int], known: dict[int, int], spared: set[int]) -> dict[int, int]:
    """The processes to take along: every descendant of the registered group leaders ``roots`` (and every member
    of their groups) found now, plus those of ``known`` that are still the same process (a descendant re-parented
    to the daemon when its parent died is no longer below a leader, but it is still a child's). pid -> start time.

    Only what descends from a registered leader: never the daemon's other children, its ancestors or anything
    else on the machine — whatever the daemon's fate when this helper started (it may already be gone)."""
    kids: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                pid = int(name)
                starts[pid] = st[1]
                kids.setdefault(st[0], []).append(pid)
                if st[2] in roots:
                    kids.setdefault(st[2], []).append(pid)  # a member of a registered group
    found = {pid: start for pid, start in known.items() if starts.get(pid) == start}
    stack = [r for r in roots if r in starts]
    seen = set(stack)
    while stack:
        for pid in kids.get(stack.pop(), ()):
            if pid not in seen:
                seen.add(pid)
                stack.append(pid)
                if pid not in spared:
                    found[pid] = starts[pid]
    for r in roots:
        if r in starts and r not in spared:
            found[r] = starts[r]
    return found


def _ancestors(pid: int) -> set[int]:
    out: set[int] = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        st = _stat(pid)
        if st is None:
            break
        pid = st[0]
    return out


def main() -> None:
    """The helper: read registrations from stdin until it closes, then kill everything it knows of."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    me = os.getpid()
    daemon = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    # never ours to kill: this helper, the daemon and whatever it runs under (were the daemon already gone when
    # this started, getppid() would name init or a subreaper far up the tree)
    spared = {0, 1, me, daemon} | _ancestors(me) | _ancestors(daemon)
    groups: set[int] = set()
    known: dict[int, int] = {}  # every descendant of a registered leader seen so far: pid -> start time
    told: dict[int, int] = {}  # detached processes the daemon told us about: pid -> start time
    fd, buf, last = sys.stdin.buffer.fileno(), b"", 0.0
    while True:
        now = time.monotonic()
        if now - last >= 0.5:
            known, last = _scan(groups, known, spared), now
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *lines, buf = (buf + chunk).split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                if line[:2] == b"+p":  # a detached process the daemon attributed: pid:start
                    told_pid, told_start = line[2:].split(b":")
                    told[int(told_pid)] = int(told_start)
                elif line[:2] == b"-p":
                    told.pop(int(line[2:]), None)
                elif line[:1] == b"+":
                    groups.add(int(line[1:]))
                elif line[:1] == b"-":
                    groups.discard(int(line[1:]))
    known = _scan(groups, known, spared)  # the latest: a descendant started since the last scan goes too
    _kill_all(groups, {**known, **told}, spared)


def _kill_all(groups: set[int], pids: dict[int, int], spared: set[int]) -> None:
    own_group = os.getpgrp()
    for g in groups:
        if g in spared or g == own_group:  # killpg(1) is kill(-1): never a group that is not a child's own
            continue
        with contextlib.suppress(OSError):
            os.killpg(g, signal.SIGKILL)
    for pid, start in pids.items():  # descendants that left their group (setsid) too, if still the same process
        st = _stat(pid)
        if pid not in spared and st is not None and st[1] == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class Guardian:
    """A helper process that SIGKILLs what the daemon leaves behind when the daemon's end of its pipe closes.

    That is every registered process group, every descendant of their leaders it has seen (it scans every 0.5 s,
    so processes that left their group with ``setsid`` go too) and the detached processes it was told of.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        assert popen.stdin is not None
        self._fd = popen.stdin.fileno()

    @classmethod
    def start(cls) -> Guardian:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid())],
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


if __name__ == "__main__":
    main()
