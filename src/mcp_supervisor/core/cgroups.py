"""One cgroup v2 per OS child, when the daemon runs in a delegated subtree (systemd ``Delegate=yes``).

Detected, never required: the daemon's own cgroup must be on a cgroup2 mount, marked delegated (systemd sets the
``trusted.delegate`` or ``user.delegate`` extended attribute) and writable. The daemon then moves itself into a
``supervisor`` leaf (cgroup v2 keeps processes out of inner nodes) and gives each OS child incarnation its own
sibling cgroup, which the child joins before it execs. ``cgroup.kill`` then stops everything the child started,
including processes that left its process group (``setsid``); without a delegated subtree the process group (and
the subreaper's escapee tracking) is the mechanism.
"""

from __future__ import annotations

import contextlib
import os
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _own_cgroup() -> str | None:
    """The directory of this process's cgroup v2, or None."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((line[3:].strip() for line in f if line.startswith("0::")), None)
        if rel is None:
            return None
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    for fields in mounts:
        sep = fields.index("-")
        if fields[sep + 1] == "cgroup2":
            return os.path.join(fields[4], rel.lstrip("/")).rstrip("/")
    return None


def _delegated(path: str) -> bool:
    for attr in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, attr) == b"1":
                return True
    return False


class Cgroups:
    """The delegated subtree this daemon manages: a ``supervisor`` leaf for itself and one cgroup per child."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._seq = 0

    @classmethod
    def detect(cls) -> Cgroups | None:
        """Take over the delegated subtree this process is in, or None (then process groups are used)."""
        if os.environ.get("MCP_SUPERVISOR_CGROUPS", "1") == "0":
            return None
        root = _own_cgroup()
        if root is None or not _delegated(root) or not os.access(os.path.join(root, "cgroup.procs"), os.W_OK):
            return None
        if not os.path.exists(os.path.join(root, "cgroup.kill")):
            return None  # before Linux 5.14: nothing gained over process groups
        try:
            leaf = os.path.join(root, "supervisor")
            os.makedirs(leaf, exist_ok=True)
            with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            with open(os.path.join(root, "cgroup.controllers")) as f:
                available = set(f.read().split()) & {"memory", "cpu", "pids"}
            for controller in available:  # accounting for the children, where the subtree offers it
                with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                    f.write(f"+{controller}")
        except OSError:
            return None
        return cls(root)

    def create(self, child_path: str) -> str:
        """A new cgroup for one incarnation of the child at ``child_path``; OSError when it cannot be made."""
        self._seq += 1
        name = f"child-{_UNSAFE.sub('_', child_path)[:200]}-{self._seq}"
        path = os.path.join(self.root, name)
        os.mkdir(path)
        return path

    @staticmethod
    def kill(path: str) -> None:
        """SIGKILL every process in the cgroup, wherever it went in the process tree."""
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")

    @staticmethod
    def populated(path: str) -> bool:
        try:
            with open(os.path.join(path, "cgroup.events")) as f:
                return "populated 1" in f.read()
        except OSError:
            return False

    @staticmethod
    def remove(path: str) -> bool:
        """Remove an emptied cgroup; False while processes are still leaving it."""
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
