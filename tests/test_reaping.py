"""Nothing the daemon's children leave behind stays a zombie: the daemon (a child subreaper) reaps every process
re-parented to it — shell wrappers' background jobs, a pre-fork server's workers after its master died — without
stealing the exit status of the processes it (or a worker) launched itself. A sampler looks at the daemon's
children every 20 ms throughout: no zombie may live a second."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_supervisor.testing import alive, free_port, wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = pytest.mark.realtime

PREFORK = """
import os, signal, sys, time
workers = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            time.sleep(1000)
    workers.append(pid)
print("master", os.getpid(), "workers", *workers, flush=True)
def stop(*_):
    for w in workers:
        os.kill(w, signal.SIGTERM)
    for w in workers:
        os.waitpid(w, 0)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(1000)
"""

POSTMASTER = """
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()  # as PostgreSQL's backends do: out of the leader's process group
    while True:
        time.sleep(1000)
def stop(*_):
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("postmaster", os.getpid(), "backend", pid, flush=True)
while True:
    time.sleep(1000)
"""

SUBPROCESSES = """
import asyncio
from mcp_supervisor.telemetry.logs import get_logger

def factory(config):
    async def run(ctx):
        log = get_logger("spawner")
        ctx.started()
        codes = []
        while True:
            proc = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.05; exit 7")
            codes.append(await proc.wait())
            if len(codes) % 10 == 0:
                log.info(f"exit codes {sorted(set(codes))}")
    return run
"""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    return [p for p, ppid, _ in processes() if ppid == pid]


def zombies_of(pid: int) -> list[int]:
    return [p for p, ppid, zombie in processes() if ppid == pid and zombie]


def processes() -> list[tuple[int, int, bool]]:
    """(pid, parent, zombie) of every process."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        found.append((int(name), int(rest[1]), rest[0] == b"Z"))
    return found


class ZombieWatch:
    """Samples the daemon's zombie children every 20 ms; ``oldest`` is the longest any was seen to last."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first_seen: dict[int, float] = {}
        self.oldest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = time.monotonic()
            current = set(zombies_of(self.pid))
            for z in current:
                self.first_seen.setdefault(z, now)
                self.oldest = max(self.oldest, now - self.first_seen[z])
            for z in set(self.first_seen) - current:
                del self.first_seen[z]

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.oldest


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    (tmp_path / "prefork.py").write_text(PREFORK)
    (tmp_path / "postmaster.py").write_text(POSTMASTER)
    (tmp_path / "subprocs.py").write_text(SUBPROCESSES)
    d = Daemon(
        tmp_path,
        f"""
[tree]
intensity = 1000
[[tree.children]]
id = "wrapper"
command = ["sh", "-c", "sleep 1000 & wait"]
[[tree.children]]
id = "prefork"
command = ["python3", "{tmp_path / "prefork.py"}"]
[[tree.children]]
id = "postmaster"
command = ["python3", "{tmp_path / "postmaster.py"}"]
[[tree.children]]
id = "spawner"
worker = "subprocs:factory"
""",
    )
    d.wait_ready()
    yield d
    d.stop()


def settled(d: Daemon, path: str, old: int | None) -> int:
    return int(wait_until(lambda: (n := d.node(path))["state"] == "running" and n["pid"] not in (None, old)
                          and n["pid"], 20, f"{path} running again"))  # fmt: skip


def test_restarts_and_kills_leave_no_zombie_under_the_daemon(daemon: Daemon) -> None:
    watch = ZombieWatch(daemon.proc.pid)
    try:
        for _ in range(5):  # a shell wrapper's background job loses its parent at every restart
            before = daemon.node("wrapper")["pid"]
            assert daemon.request("POST", "/children/wrapper/restart")[0] == 200
            settled(daemon, "wrapper", before)
        for _ in range(3):  # a pre-fork server's master killed: its workers are re-parented to the daemon
            master = daemon.node("prefork")["pid"]
            wait_until(lambda m=master: len(children_of(m)) == 3, 20, "the master's three workers")
            os.kill(master, signal.SIGKILL)
            settled(daemon, "prefork", master)
        wait_until(lambda: not zombies_of(daemon.proc.pid), 1.0, "no zombie a second after the last exit")
        reasons = [e for e in daemon.log_events() if e.get("event") == "child exited" and e.get("child") == "prefork"]
        assert reasons and all(e["detail"] == "killed by SIGKILL" for e in reasons)
    finally:
        oldest = watch.stop()
    print(f"\nthe oldest zombie under the daemon lived {oldest * 1000:.0f} ms")
    assert oldest < 1.0


def test_reloads_that_replace_wrappers_leave_no_zombie(daemon: Daemon) -> None:
    watch = ZombieWatch(daemon.proc.pid)
    text = daemon.config.read_text()
    try:
        for i in range(20):
            daemon.config.write_text(text.replace("sleep 1000 & wait", f"sleep {1001 + i % 2} & wait"))
            code, doc, _ = daemon.request("POST", "/reload?wait=1")
            assert code == 200 and doc["changes"] == [{"path": "wrapper", "change": "changed"}], doc
        wait_until(lambda: not zombies_of(daemon.proc.pid), 1.0, "no zombie a second after the last reload")
    finally:
        oldest = watch.stop()
    assert oldest < 1.0


def test_a_clean_stop_of_setsid_workers_is_not_an_alarm_and_leaves_nothing(daemon: Daemon) -> None:
    backend = int(wait_until(lambda: daemon.node("postmaster").get("detached_pids"), 20, "the backend seen")[0])
    assert alive(backend) and os.getpgid(backend) != daemon.node("postmaster")["pid"]
    assert daemon.request("POST", "/children/postmaster/stop")[0] == 200  # it stops its backend itself
    assert not alive(backend)
    assert daemon.stop() == 0
    warned = [e for e in daemon.log_events() if e.get("event") == "killed a descendant that outlived its child"]
    assert warned == []  # everything stopped the way it should: no alarm, nothing killed


def test_a_workers_own_subprocesses_keep_their_exit_status(daemon: Daemon) -> None:
    """The reaper leaves alone what a worker started (asyncio's watcher reads the status): exit 7, never 255."""
    reports = wait_until(lambda: [e["event"] for e in daemon.log_events() if "exit codes" in e.get("event", "")],
                         30, "the worker's reports")  # fmt: skip
    assert all(r == "exit codes [7]" for r in reports), reports


def test_as_pid_1_it_reaps_orphans_from_anywhere_and_exits_with_the_childs_status(tmp_path: Path) -> None:
    """In a container the daemon is PID 1: every orphan comes to it (here: processes that left their group and
    lost their parent at once, which a subreaper could not attribute); with exit_code = "child" it exits with the
    status of the child that made the root give up, as s6-overlay does."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs util-linux's unshare and root (a PID namespace)")
    flag = tmp_path / "fail"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[daemon]
admin = "127.0.0.1:{free_port()}"
exit_code = "child"
log_format = "json"
[tree]
intensity = 2
period = 30
[[tree.children]]
id = "orphans"
command = ["sh", "-c", "for i in 1 2 3 4 5; do (setsid sh -c 'sleep 0.2' &); done; exec sleep 1000"]
[[tree.children]]
id = "failing"
command = ["sh", "-c", "while [ ! -e {flag} ]; do sleep 0.05; done; exit 3"]
""")
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "mcp_supervisor.cli",
                             "run", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=tmp_path)  # fmt: skip
    try:
        daemon = int(wait_until(lambda: next(iter(children_of(proc.pid)), None), 20, "the daemon, PID 1 inside"))
        watch = ZombieWatch(daemon)
        orphans = wait_until(lambda: [p for p in children_of(daemon) if cmdline(p) == "sh -c sleep 0.2"], 20,
                             "the orphans, re-parented to PID 1")  # fmt: skip
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in orphans), 5, "the orphans reaped")
        flag.touch()  # now "failing" exits 3, is restarted, exits 3 ...: the root gives up
        code = proc.wait(60)
        oldest = watch.stop()
    finally:
        if proc.poll() is None:  # the namespace's init dies with everything in it; then unshare ends
            for pid in children_of(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    assert code == 3, out[-2000:]
    assert "exiting with the status of the child that made the root give up" in out
    assert oldest < 1.0, f"a zombie lived {oldest:.2f} s under PID 1"


def test_a_pidfile_naming_an_older_process_is_refused_and_that_process_is_left_alone(tmp_path: Path) -> None:
    """A daemonizing program's pidfile names a process that was running before the child started (a stale file, a
    wrong setting): the child fails to start with a reason that says so, and that process is never adopted,
    signalled or killed — the tree's start fails, the daemon exits, the bystander lives on."""
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        pidfile = tmp_path / "prog.pid"
        d = Daemon(tmp_path, f"""
[tree]
[[tree.children]]
id = "prog"
command = ["sh", "-c", "echo {bystander.pid} > {pidfile}"]
pidfile = "{pidfile}"
""")  # fmt: skip
        assert d.proc.wait(timeout=30) != 0
        d.stop()
        assert f"names pid {bystander.pid}, which is not a process it started" in d.log_text()
        assert alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()
