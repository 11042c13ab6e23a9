"""The guardian kills what the daemon's children left behind, and nothing else: not the daemon's other children,
not its siblings or ancestors — also when the daemon was killed before the guardian read its parent's pid (then
``getppid()`` names init, and "the daemon's descendants" would be every process on the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mcp_supervisor.core import guardian
from mcp_supervisor.testing import wait_until

GUARDIAN = Path(guardian.__file__).resolve()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def sleeper(new_session: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], start_new_session=new_session)


def test_a_guardian_whose_daemon_is_gone_kills_only_the_registered_groups() -> None:
    bystander = sleeper(new_session=False)  # a child of this process, as the daemon's other children would be
    loner = sleeper(new_session=True)  # in a group of its own, never registered
    # a registered child whose grandchild leaves the group: both go
    child = subprocess.Popen(
        ["sh", "-c", "setsid sleep 300 & echo $!; exec sleep 300"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert child.stdout is not None
    escapee = int(child.stdout.readline())
    child.stdout.close()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that names no process: the daemon, gone before the guardian started
    helper = subprocess.Popen(
        [sys.executable, "-I", "-S", str(GUARDIAN), str(dead.pid)], stdin=subprocess.PIPE, start_new_session=True
    )
    try:
        assert helper.stdin is not None
        helper.stdin.write(f"+{child.pid}\n".encode())
        helper.stdin.flush()
        helper.stdin.close()
        assert helper.wait(timeout=10) == 0
        wait_until(lambda: child.poll() is not None, 10, "the registered group killed")
        wait_until(lambda: not alive(escapee), 10, "the escapee killed")
        assert alive(bystander.pid) and alive(loner.pid) and alive(os.getpid())
    finally:
        for p in (bystander, loner, child, helper):
            p.kill()
            p.wait()
        if alive(escapee):
            os.kill(escapee, 9)
