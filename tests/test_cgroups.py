"""A daemon in a delegated cgroup v2 subtree gives each OS child its own cgroup and stops it with cgroup.kill,
which reaches processes that left the child's process group; elsewhere the process group is the mechanism."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_supervisor.core.cgroups import Cgroups
from mcp_supervisor.testing import alive, wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = pytest.mark.realtime


def cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


@pytest.fixture
def delegated() -> Iterator[Path]:
    """A fresh cgroup marked delegated as systemd marks one (``trusted.delegate``), removed afterwards."""
    mount = cgroup2_mount()
    if mount is None or os.geteuid() != 0:
        pytest.skip("needs a cgroup2 mount and root to make a delegated cgroup")
    root = Path(mount) / f"mcp-test-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        root.mkdir()
        os.setxattr(root, "trusted.delegate", b"1")
    except OSError as e:
        pytest.skip(f"cannot make a delegated cgroup here: {e}")
    yield root
    for sub in sorted(root.iterdir(), reverse=True):
        if sub.is_dir():
            Cgroups.kill(str(sub))
            wait_until(lambda s=sub: Cgroups.remove(str(s)), what=f"{sub} removed")
    Cgroups.kill(str(root))
    wait_until(lambda: Cgroups.remove(str(root)), what="the test cgroup removed")


def procs(path: Path) -> set[int]:
    return {int(p) for p in (path / "cgroup.procs").read_text().split()}


def test_each_child_gets_a_cgroup_and_a_stop_reaches_what_left_its_group(tmp_path: Path, delegated: Path) -> None:
    escapee = tmp_path / "escapee.pid"
    toml = (
        '[tree]\n[[tree.children]]\nid = "esc"\n'
        f'command = ["sh", "-c", "setsid sh -c \'echo $$$$ > {escapee}; exec sleep 1000\' & exec sleep 1000"]\n'
    )
    join = ("sh", "-c", f'echo $$ > {delegated}/cgroup.procs && exec "$@"', "join")
    d = Daemon(tmp_path, toml, prefix=join)
    try:
        d.wait_ready()
        assert d.status()["isolation"] == "cgroup"
        assert d.proc.pid in procs(delegated / "supervisor")
        pid = d.node("esc")["pid"]
        mine = [c for c in delegated.iterdir() if c.name.startswith("child-esc-")]
        assert len(mine) == 1 and pid in procs(mine[0])
        wait_until(lambda: escapee.exists() and escapee.read_text().strip(), what="the escapee's pid")
        gone = int(escapee.read_text())
        assert alive(gone) and gone in procs(mine[0]) and os.getpgid(gone) != pid  # out of the group, in the cgroup
        code, doc, _ = d.request("POST", "/children/esc/stop")
        assert code == 200, doc
        wait_until(lambda: not alive(gone), what="the escapee killed with its cgroup")
        wait_until(lambda: not mine[0].exists(), what="the emptied cgroup removed")
    finally:
        assert d.stop() == 0


def test_without_a_delegated_subtree_the_process_group_is_the_mechanism(tmp_path: Path) -> None:
    d = Daemon(tmp_path, '[tree]\n[[tree.children]]\nid = "a"\ncommand = ["sleep", "1000"]\n')
    try:
        d.wait_ready()
        assert d.status()["isolation"] == "process-group"
    finally:
        d.stop()
