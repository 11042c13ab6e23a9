"""OS-process options against real processes: rlimits, user and umask, stop signal, sockets held by the tree
(systemd's socket-activation protocol), max_memory and liveness restarts."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.core import (
    ChildContext,
    ChildExited,
    ChildStarted,
    FailedToStartChild,
    Liveness,
    ProcessOutput,
    ProcessSpec,
    ReadyOutput,
    ReadyTCP,
    SpecError,
    SupervisorFlags,
    SupervisorSpec,
    Tree,
    WorkerSpec,
)
from mcp_supervisor.core.launch import move_fds
from mcp_supervisor.core.watches import resident_bytes
from mcp_supervisor.testing import Recorder, until

pytestmark = pytest.mark.realtime

SERVER = str(Path(__file__).parents[2] / "examples" / "socket_activated_server.py")


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


async def get(port: int, target: str = "/") -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.0\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.decode()


async def output(rec: Recorder, path: str, contains: str) -> str:
    ev = await rec.wait(lambda e: isinstance(e, ProcessOutput) and e.path == path and contains in e.line)
    assert isinstance(ev, ProcessOutput)
    return ev.line


async def test_limits_umask_and_stop_signal_are_applied_before_exec() -> None:
    script = "grep -E 'open files|core file' /proc/self/limits; trap 'echo got USR1; exit 0' USR1; umask; " \
        "while :; do sleep 0.05; done"  # fmt: skip
    spec = ProcessSpec(
        id="p", command=["bash", "-c", script], limits={"nofile": 321, "core": 0}, umask=0o027, stop_signal=10
    )
    tree = Tree(SupervisorSpec(id="root", children=[spec]))
    rec = Recorder(tree.bus)
    async with tree:
        line = await output(rec, "p", "open files")
        assert line.split()[3:5] == ["321", "321"]
        assert (await output(rec, "p", "core file")).split()[4:6] == ["0", "0"]
        await output(rec, "p", "0027")
        await tree.terminate_child("p")
        await output(rec, "p", "got USR1")  # the stop signal, not SIGTERM
        exited = rec.of(ChildExited, "p")[-1]
        assert exited.reason.kind in {"normal", "shutdown"}


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
async def test_a_child_runs_as_the_user_it_names() -> None:
    nobody = pwd.getpwnam("nobody")
    spec = ProcessSpec(id="p", command=["sh", "-c", "id -u; id -g; exec sleep 1000"], user="nobody")
    tree = Tree(SupervisorSpec(id="root", children=[spec]))
    rec = Recorder(tree.bus)
    async with tree:
        assert await output(rec, "p", str(nobody.pw_uid)) == str(nobody.pw_uid)  # id -u
        assert await output(rec, "p", str(nobody.pw_gid)) == str(nobody.pw_gid)  # id -g
        pid = tree.child("p").pid
        await until(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep")
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        assert status["Uid"].split() == [str(nobody.pw_uid)] * 4  # real, effective, saved, filesystem
        assert status["Gid"].split() == [str(nobody.pw_gid)] * 4


async def test_an_unknown_user_or_a_missing_socket_is_a_clear_start_failure() -> None:
    for spec, says in (
        (ProcessSpec(id="p", command=["true"], user="no-such-user-here"), "user 'no-such-user-here' does not exist"),
        (ProcessSpec(id="p", command=["true"], sockets=["web"]), "socket 'web' is not held by the daemon"),
    ):
        with pytest.raises(FailedToStartChild, match=says):
            async with Tree(SupervisorSpec(id="root", children=[spec])):
                pass


def test_options_are_checked_with_the_key_they_name() -> None:
    with pytest.raises(SpecError, match=r"limits\.files"):
        ProcessSpec(id="p", command=["true"], limits={"files": 3})
    with pytest.raises(SpecError, match="stop_signal"):
        ProcessSpec(id="p", command=["true"], stop_signal=0)
    with pytest.raises(SpecError, match="umask"):
        ProcessSpec(id="p", command=["true"], umask=0o1000)
    with pytest.raises(SpecError, match="live"):
        Liveness(http="http://x/", tcp=("h", 1))
    with pytest.raises(SpecError, match="sockets"):
        ProcessSpec(id="p", command=["true"], sockets=["a", "a"])


async def test_held_sockets_arrive_by_socket_activation_at_fd_3_with_the_programs_own_pid() -> None:
    web, admin = listener(), listener()
    # a descriptor numbered above both makes the renumbering go the hard way round
    spec = ProcessSpec(id="srv", command=[sys.executable, SERVER], sockets=["web", "admin"])
    check = ProcessSpec(
        id="env",
        command=["sh", "-c", 'echo "fds=$LISTEN_FDS names=$LISTEN_FDNAMES pid_ok=$([ "$LISTEN_PID" = $$ ] && echo y)"'
                 "; exec sleep 1000"],
        sockets=["admin", "web"],
    )  # fmt: skip
    tree = Tree(SupervisorSpec(id="root", children=[spec, check]))
    tree.hold_socket("web", web)
    tree.hold_socket("admin", admin)
    rec = Recorder(tree.bus)
    try:
        async with tree:
            line = await output(rec, "srv", "serving")
            assert "fds=[3, 4]" in line
            pid = tree.child("srv").pid
            assert (await get(web.getsockname()[1])).endswith(str(pid))
            assert (await get(admin.getsockname()[1])).endswith(str(pid))
            assert await output(rec, "env", "fds=") == "fds=2 names=admin:web pid_ok=y"
            pid = tree.child("env").pid
            await until(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep")  # the final program
            assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2, 3, 4]  # nothing else leaked
    finally:
        web.close()
        admin.close()


async def test_a_restart_keeps_the_held_socket_connections_wait_instead_of_being_refused() -> None:
    web = listener()
    port = web.getsockname()[1]
    tree = Tree(SupervisorSpec(id="root", children=[ProcessSpec(id="srv", command=[sys.executable, SERVER],
                                                                sockets=["web"])]))  # fmt: skip
    tree.hold_socket("web", web)
    rec = Recorder(tree.bus)
    try:
        async with tree:
            await output(rec, "srv", "serving")
            first = tree.child("srv").pid
            await tree.terminate_child("srv")
            answer = asyncio.ensure_future(get(port))  # nobody accepts now: it waits in the backlog
            await asyncio.sleep(0)
            await tree.restart_child("srv")
            second = tree.child("srv").pid
            assert second != first
            assert (await asyncio.wait_for(answer, 20)).endswith(str(second))
    finally:
        web.close()


async def test_a_child_above_max_memory_for_two_checks_is_restarted_with_that_reason() -> None:
    spec = ProcessSpec(
        id="hog", command=[sys.executable, SERVER, "--port", "0", "--allocate", "64"], max_memory=32 * 2**20,
        memory_check=0.1, ready=None,
    )  # fmt: skip
    tree = Tree(SupervisorSpec(id="root", children=[spec], flags=SupervisorFlags(intensity=10)))
    rec = Recorder(tree.bus)
    async with tree:
        ev = await rec.wait(lambda e: isinstance(e, ChildExited) and e.path == "hog", timeout=20)
        assert isinstance(ev, ChildExited)
        assert ev.reason.kind == "abnormal" and ev.reason.detail.startswith("max_memory: resident")
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)


async def test_resident_memory_counts_the_whole_group() -> None:
    spec = ProcessSpec(id="p", command=["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    async with Tree(SupervisorSpec(id="root", children=[spec])) as tree:
        pid = tree.child("p").pid
        assert pid is not None
        alone = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        await until(lambda: resident_bytes(pid) > alone)  # the two sleeps are counted too


async def test_a_failing_liveness_check_restarts_the_child_as_abnormal(tmp_path: Path) -> None:
    sick = tmp_path / "sick"
    port_sock = listener()
    port = port_sock.getsockname()[1]
    port_sock.close()
    spec = ProcessSpec(
        id="web",
        command=[sys.executable, SERVER, "--port", str(port), "--sick", str(sick)],
        ready=ReadyTCP(host="127.0.0.1", port=port),
        live=Liveness(http=f"http://127.0.0.1:{port}/healthz", every=0.1, timeout=2, failures=3),
    )
    tree = Tree(SupervisorSpec(id="root", children=[spec], flags=SupervisorFlags(intensity=10)))
    rec = Recorder(tree.bus)
    async with tree:
        first = tree.child("web").pid
        assert (await get(port, "/healthz")).endswith(str(first))
        sick.touch()
        ev = await rec.wait(lambda e: isinstance(e, ChildExited) and e.path == "web", timeout=20)
        assert isinstance(ev, ChildExited)
        assert ev.reason.kind == "abnormal"
        assert ev.reason.detail == "liveness: 3 checks failed in a row (last: HTTP 503)"
        sick.unlink()
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert tree.child("web").pid != first


async def test_a_fencing_token_reaches_workers_and_os_processes() -> None:
    seen: list[int | None] = []

    async def worker(ctx: ChildContext[Any]) -> None:
        seen.append(ctx.fencing_token)
        ctx.started()
        await asyncio.Event().wait()

    spec_p = ProcessSpec(id="p", command=["sh", "-c", 'echo "token=$MCP_FENCING_TOKEN"; exec sleep 1000'],
                         fencing_token=7)  # fmt: skip
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="w", run=worker, fencing_token=7), spec_p,
                                                    WorkerSpec(id="plain", run=worker)]))  # fmt: skip
    rec = Recorder(tree.bus)
    async with tree:
        assert await output(rec, "p", "token=") == "token=7"
        assert seen == [7, None]
    with pytest.raises(SpecError, match="fencing_token"):
        WorkerSpec(id="w", run=worker, fencing_token="7")  # type: ignore[arg-type]


@pytest.mark.parametrize("fds", [(4, 3), (3, 4), (3,), (9, 3, 5), (12,)])
def test_held_socket_descriptors_land_at_3_and_up_in_order_whatever_their_numbers(
    tmp_path: Path, fds: tuple[int, ...]
) -> None:
    files = [tmp_path / f"f{i}" for i in range(len(fds))]
    for f in files:
        f.touch()
    opened = " ".join(f"{fd}<{f}" for fd, f in zip(fds, files, strict=True))
    script = (
        f"exec {opened}; {move_fds(fds)}; for fd in $(ls /proc/$$/fd); do echo $fd $(readlink /proc/$$/fd/$fd); done"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    # (the listing's own pipe shows up, then is gone when readlink looks: such lines have no target)
    table = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    for i, f in enumerate(files):
        assert table[str(3 + i)] == str(f)
    leftovers = {fd for fd in table if int(fd) > 2 + len(fds) and table[fd].startswith(str(tmp_path))}
    assert leftovers == set()


async def test_readiness_by_output_waits_for_the_line_and_fails_when_the_process_ends_first(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    spec = ProcessSpec(
        id="srv", command=["sh", "-c", f"echo starting; while [ ! -e {gate} ]; do sleep 0.01; done; "
                                       "echo 'Listening on 127.0.0.1:8080' >&2; exec sleep 100"],
        ready=ReadyOutput(pattern=r"Listening on \S+:\d+", timeout=20),
    )  # fmt: skip
    tree = Tree(SupervisorSpec(id="root", children=[spec]))
    rec = Recorder(tree.bus)
    started = asyncio.ensure_future(tree.start())
    try:
        await output(rec, "srv", "starting")
        await asyncio.sleep(0.3)  # the child has printed its first line and waits for the gate: not ready yet
        assert not started.done()
        gate.touch()
        await asyncio.wait_for(started, 20)
        ev = await rec.wait(lambda e: isinstance(e, ChildStarted) and e.path == "srv")
        assert isinstance(ev, ChildStarted)
    finally:
        await tree.stop()
    quitter = ProcessSpec(id="q", command=["sh", "-c", "echo almost; exit 0"], ready=ReadyOutput(pattern="ready"))
    with pytest.raises(FailedToStartChild):
        async with Tree(SupervisorSpec(id="root", children=[quitter])):
            pass


def test_a_readiness_pattern_must_be_a_regular_expression() -> None:
    with pytest.raises(SpecError, match="is not a regular expression"):
        ReadyOutput(pattern="(unclosed")
