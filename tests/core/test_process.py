"""OS-process children against real processes: groups, signals, reaping, output, readiness, daemon death."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mcp_supervisor.core import (
    ChildExited,
    ChildStarted,
    FailedToStartChild,
    ProcessOutput,
    ProcessSpec,
    ReadyCommand,
    ReadyTCP,
    Restart,
    ShutdownTimeout,
    State,
    SupervisorSpec,
    Tree,
)
from mcp_supervisor.testing import Recorder, alive, free_port, until

pytestmark = pytest.mark.realtime

SLEEP = ["sleep", "1000"]


def tree_of(*children: ProcessSpec, **flags: object) -> tuple[Tree, Recorder]:
    tree = Tree(SupervisorSpec(id="root", children=children))
    return tree, Recorder(tree.bus)


async def test_kill_9_of_a_child_restarts_it_with_a_new_pid_and_the_old_one_is_reaped() -> None:
    tree, rec = tree_of(ProcessSpec(id="p", command=SLEEP))
    async with tree:
        old = tree.child("p").pid
        assert old is not None and alive(old)
        assert tree.status().as_dict()["children"][0]["pid"] == old
        os.kill(old, signal.SIGKILL)
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        new = tree.child("p").pid
        assert new != old and new is not None and alive(new)
        exited = rec.of(ChildExited, "p")[0]
        assert exited.reason.kind == "abnormal" and exited.reason.detail == "killed by SIGKILL"
        with pytest.raises(ChildProcessError):  # already reaped: no zombie left
            os.waitpid(old, os.WNOHANG)
        assert not os.path.exists(f"/proc/{old}")
    assert not alive(new)


@pytest.mark.parametrize(("code", "kind", "restarted"), [(0, "normal", False), (3, "abnormal", True)])
async def test_exit_codes_map_to_exit_reasons(code: int, kind: str, restarted: bool) -> None:
    marker_cmd = ["sh", "-c", f'[ -e "$M" ] && exec sleep 1000; touch "$M"; exit {code}']
    tree, rec = tree_of(
        ProcessSpec(
            id="p", command=marker_cmd, restart=Restart.TRANSIENT, env={"M": f"/tmp/mcp-test-{os.getpid()}-{code}"}
        )
    )
    try:
        async with tree:
            exited = await rec.wait(lambda e: isinstance(e, ChildExited))
            assert exited.reason.kind == kind
            await tree.supervisor().sync()
            assert (tree.child("p").state is State.RUNNING) is restarted
    finally:
        Path(f"/tmp/mcp-test-{os.getpid()}-{code}").unlink(missing_ok=True)


async def test_stop_is_sigterm_to_the_group_and_reads_as_shutdown() -> None:
    tree, rec = tree_of(ProcessSpec(id="p", command=SLEEP))
    await tree.start()
    pid = tree.child("p").pid
    report = await tree.stop()
    assert report.clean
    exited = rec.of(ChildExited, "p")[0]
    assert exited.reason.kind == "shutdown" and exited.reason.detail == "stopped by SIGTERM"
    assert pid is not None and not alive(pid)


async def test_a_child_ignoring_sigterm_is_killed_after_its_shutdown_time() -> None:
    script = "trap '' TERM; echo ready; while :; do sleep 0.05; done"
    tree, rec = tree_of(ProcessSpec(id="p", command=["sh", "-c", script], shutdown=0.5))
    await tree.start()
    await rec.wait(lambda e: isinstance(e, ProcessOutput) and e.line == "ready")
    t0 = time.monotonic()
    report = await tree.stop()
    took = time.monotonic() - t0
    assert report.clean and 0.5 <= took < 5
    assert rec.of(ShutdownTimeout, "p")[0].timeout_s == 0.5
    assert rec.of(ChildExited, "p")[0].reason.detail == "stopped by SIGKILL"


GRANDKIDS = textwrap.dedent(
    """
    import os, subprocess, sys, time
    kids = [subprocess.Popen(["sleep", "1000"]) for _ in range(2)]
    print(" ".join(str(k.pid) for k in kids), flush=True)
    time.sleep(1000)
    """
)


@pytest.mark.parametrize("how", ["stop", "kill -9 of the leader"])
async def test_grandchildren_go_with_the_group(how: str) -> None:
    tree, rec = tree_of(ProcessSpec(id="p", command=[sys.executable, "-c", GRANDKIDS], restart=Restart.TEMPORARY))
    async with tree:
        line = await rec.wait(lambda e: isinstance(e, ProcessOutput) and e.stream == "stdout")
        kids = [int(x) for x in line.line.split()]
        assert all(alive(k) for k in kids)
        leader = tree.child("p").pid
        assert leader is not None
        if how == "stop":
            await tree.terminate_child("p")
        else:
            os.kill(leader, signal.SIGKILL)
            await rec.wait(lambda e: isinstance(e, ChildExited))
        await until(lambda: not any(alive(k) for k in kids), what="grandchildren gone")


async def test_output_is_forwarded_line_by_line_tagged_with_the_child() -> None:
    script = "echo one; printf 'two\\nthree'; echo oops >&2; exec sleep 1000"
    tree, rec = tree_of(ProcessSpec(id="talker", command=["sh", "-c", script]))
    async with tree:
        await until(lambda: len(rec.of(ProcessOutput)) >= 3)
    lines = [(e.path, e.stream, e.line) for e in rec.of(ProcessOutput)]
    assert ("talker", "stdout", "one") in lines and ("talker", "stderr", "oops") in lines
    assert ("talker", "stdout", "two") in lines and ("talker", "stdout", "three") in lines  # flushed at exit


async def test_environment_cwd_and_systemd_variables_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/fake")
    monkeypatch.setenv("WATCHDOG_USEC", "1000")
    script = 'echo "mode=$MODE notify=${NOTIFY_SOCKET:-none} wd=${WATCHDOG_USEC:-none} cwd=$(pwd)"; exec sleep 1000'
    tree, rec = tree_of(ProcessSpec(id="p", command=["sh", "-c", script], env={"MODE": "x"}, cwd=str(tmp_path)))
    async with tree:
        ev = await rec.wait(lambda e: isinstance(e, ProcessOutput))
    assert ev.line == f"mode=x notify=none wd=none cwd={tmp_path}"


async def test_tcp_readiness_waits_for_the_port() -> None:
    port = free_port()
    server = textwrap.dedent(
        f"""
        import socket, time
        time.sleep(0.3)
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen()
        print("listening", flush=True)
        while True:
            s.accept()[0].close()
        """
    )
    tree, rec = tree_of(
        ProcessSpec(
            id="srv", command=[sys.executable, "-c", server], ready=ReadyTCP(host="127.0.0.1", port=port, timeout=10)
        )
    )
    async with tree:
        assert rec.of(ProcessOutput, "srv")[0].line == "listening"  # ready came after the port was bound
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


async def test_tcp_readiness_timeout_is_a_start_failure_and_the_process_is_stopped() -> None:
    port = free_port()
    tree, rec = tree_of(ProcessSpec(id="srv", command=SLEEP, ready=ReadyTCP(host="127.0.0.1", port=port, timeout=0.3)))
    with pytest.raises(FailedToStartChild, match="start timeout"):
        await tree.start()
    started = [e for e in rec.drain() if isinstance(e, ChildExited)]
    assert started == []  # it never counted as started
    assert tree.child("srv").pid is not None and not alive(tree.child("srv").pid)  # type: ignore[arg-type]


async def test_command_readiness_and_a_command_that_does_not_exist(tmp_path: Path) -> None:
    flag = tmp_path / "up"
    tree, _ = tree_of(
        ProcessSpec(
            id="p",
            command=["sh", "-c", f"sleep 0.2; touch {flag}; exec sleep 1000"],
            ready=ReadyCommand(command=["test", "-e", str(flag)], timeout=10),
        )
    )
    async with tree:
        assert flag.exists()
    missing, _ = tree_of(ProcessSpec(id="m", command=["/nonexistent/binary"]))
    with pytest.raises(FailedToStartChild, match="FileNotFoundError"):
        await missing.start()


DAEMON = textwrap.dedent(
    """
    import asyncio, sys
    from mcp_supervisor.core import ProcessSpec, SupervisorSpec, Tree, ProcessOutput
    GRAND = "import subprocess,time; k=subprocess.Popen(['sleep','1000']); print(k.pid, flush=True); time.sleep(1000)"
    async def main():
        tree = Tree(SupervisorSpec(id="root", children=[
            ProcessSpec(id="a", command=[sys.executable, "-c", GRAND]),
            ProcessSpec(id="b", command=["sleep", "1000"]),
        ]))
        sub = tree.bus.subscribe()
        await tree.start()
        ev = await sub.get()
        while not isinstance(ev, ProcessOutput):
            ev = await sub.get()
        print(tree.child("a").pid, tree.child("b").pid, ev.line, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
    """
)


def test_kill_9_of_the_supervising_process_leaves_no_child_alive() -> None:
    with subprocess.Popen([sys.executable, "-c", DAEMON], stdout=subprocess.PIPE, text=True) as daemon:
        try:
            assert daemon.stdout is not None
            pids = [int(x) for x in daemon.stdout.readline().split()]
            assert len(pids) == 3 and all(alive(p) for p in pids)
        finally:
            daemon.kill()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(p) for p in pids), "a child or grandchild survived kill -9 of the daemon"
