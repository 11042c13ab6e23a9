"""Programs nobody here wrote, under a real daemon, crashed the way they crash: pre-fork servers (gunicorn on a held
socket, uvicorn, nginx, php-fpm, celery's prefork pool, a Node.js cluster), redis-server, a shell wrapper with
background jobs, and a program that daemonizes itself (redis-server --daemonize, found by its pidfile).

For each, in phases: ``kill -9`` of its leader, ``kill -9`` of one of its workers, operator restarts, a config
reload, ``kill -9`` of the daemon. After each: no zombie under the daemon for more than a second (sampled
throughout), no process of an old incarnation left, the child ready again (its readiness check passing), and an
exit reason that says what happened. ``MCP_MATRIX_CYCLES`` ("leader,worker,restart"; default "3,2,2", the full
matrix is "20,5,10") sets the counts; the rows go to ``artifacts/matrix.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import alive, wait_until
from mcp_supervisor.testing.daemon import Daemon
from tests.stack_helpers import low_port
from tests.test_reaping import ZombieWatch, processes, zombies_of

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(900)]

LEADER_KILLS, WORKER_KILLS, RESTARTS = (int(n) for n in os.environ.get("MCP_MATRIX_CYCLES", "3,2,2").split(","))
VENV = Path(sys.executable).parent
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

WSGI = 'def app(environ, start_response):\n    start_response("200 OK", [("Content-Type", "text/plain")])\n    return [b"ok\\n"]\n'
ASGI = """
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok\\n"})
"""
NODE = """
const cluster = require("node:cluster");
const http = require("node:http");
const port = Number(process.argv[2]);
if (cluster.isPrimary) {
  for (let i = 0; i < 2; i++) cluster.fork();
  cluster.on("exit", () => cluster.fork());
} else {
  http.createServer((req, res) => res.end("ok\\n")).listen(port, "127.0.0.1");
}
"""
NGINX = """
daemon off;
master_process on;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""
FPM = """
[global]
error_log = /proc/self/fd/2
daemonize = no
[www]
listen = 127.0.0.1:{port}
pm = static
pm.max_children = 2
"""
TEMPLATES = {"nginx.conf", "fpm.conf", "celeryapp.py"}  # files with {port} and friends in them
CELERY = 'from celery import Celery\napp = Celery("matrix", broker="redis://127.0.0.1:{broker}/0")\n'


@dataclass
class Program:
    """One program: its child's TOML (``{port}``, ``{tmp}``, ``{broker}``, ``{venv}`` filled in), how many workers
    its leader keeps, and files it needs."""

    name: str
    toml: str
    workers: int = 0  # processes the leader keeps (and respawns when one dies); 0: a single process
    files: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # programs that must be installed
    broker: bool = False  # a redis-server child first (celery's broker)
    respawns: bool = True  # its leader replaces a worker that died (a shell's background jobs are not)


PROGRAMS = [
    Program(
        "gunicorn",
        """
[[daemon.sockets]]
name = "http"
listen = "127.0.0.1:{port}"
[tree]
intensity = 1000
[[tree.children]]
id = "gunicorn"
command = ["{venv}/gunicorn", "-w", "3", "--chdir", "{tmp}", "--graceful-timeout", "3", "wsgiapp:app"]
sockets = ["http"]
ready = {{ tcp = "127.0.0.1:{port}" }}
reload_signal = "SIGHUP"
""",
        workers=3,
        files={"wsgiapp.py": WSGI},
        needs=("{venv}/gunicorn",),
    ),
    Program(
        "uvicorn",
        """
[tree]
intensity = 1000
[[tree.children]]
id = "uvicorn"
command = ["{venv}/uvicorn", "asgiapp:app", "--workers", "2", "--port", "{port}", "--app-dir", "{tmp}"]
ready = {{ tcp = "127.0.0.1:{port}" }}
""",
        workers=2,
        files={"asgiapp.py": ASGI},
        needs=("{venv}/uvicorn",),
    ),
    Program(
        "nginx",
        """
[tree]
intensity = 1000
[[tree.children]]
id = "nginx"
command = ["nginx", "-c", "{tmp}/nginx.conf", "-p", "{tmp}", "-e", "stderr"]
stop_signal = "SIGQUIT"
reload_signal = "SIGHUP"
ready = {{ tcp = "127.0.0.1:{port}" }}
""",
        workers=2,
        files={"nginx.conf": NGINX},
        needs=("nginx",),
    ),
    Program(
        "php-fpm",
        """
[tree]
intensity = 1000
[[tree.children]]
id = "php-fpm"
command = ["php-fpm8.2", "-F", "-R", "-y", "{tmp}/fpm.conf"]
ready = {{ tcp = "127.0.0.1:{port}" }}
""",
        workers=2,
        files={"fpm.conf": FPM},
        needs=("php-fpm8.2",),
    ),
    Program(
        "celery",
        """
[tree]
intensity = 1000
[[tree.children]]
id = "broker"
command = ["redis-server", "--port", "{broker}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
ready = {{ tcp = "127.0.0.1:{broker}" }}
[[tree.children]]
id = "celery"
# the log starts empty for each incarnation (the shell execs celery: one pid)
command = ["sh", "-c", ": > {tmp}/celery.log; exec {venv}/celery -A celeryapp worker --pool prefork -c 2 -l info --without-gossip --without-mingle --without-heartbeat --pidfile {tmp}/celery.pid --logfile {tmp}/celery.log"]
cwd = "{tmp}"
# ready when its consumer says so (a worker killed before its event loop runs may never be replaced: celery's pool
# watches its processes from that loop), with both pool processes up
ready = {{ command = ["sh", "-c", "grep -q ' ready[.]$' {tmp}/celery.log && test $(pgrep -c -P $(cat {tmp}/celery.pid)) -ge 2"], timeout = 60 }}
""",
        workers=2,
        files={"celeryapp.py": CELERY},
        needs=("{venv}/celery",),
        broker=True,
    ),
    Program(
        "redis",
        """
[tree]
intensity = 1000
[[tree.children]]
id = "redis"
command = ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
ready = {{ tcp = "127.0.0.1:{port}" }}
""",
        needs=("redis-server",),
    ),
    Program(
        "node-cluster",
        """
[tree]
intensity = 1000
[[tree.children]]
id = "node-cluster"
command = ["node", "{tmp}/cluster.js", "{port}"]
ready = {{ tcp = "127.0.0.1:{port}" }}
""",
        workers=2,
        files={"cluster.js": NODE},
        needs=("node",),
    ),
    Program(
        "sh-jobs",
        """
[tree]
intensity = 1000
[[tree.children]]
id = "sh-jobs"
command = ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]
""",
        workers=2,
        respawns=False,
    ),
    Program(
        "daemonizing",
        """
[tree]
intensity = 1000
[[tree.children]]
id = "daemonizing"
command = ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--daemonize", "yes", "--pidfile",
           "{tmp}/redis.pid", "--save", "", "--appendonly", "no"]
pidfile = "{tmp}/redis.pid"
ready = {{ tcp = "127.0.0.1:{port}" }}
""",
        needs=("redis-server",),
    ),
]


def start_times() -> dict[int, int]:
    out = {}
    for pid, _, _ in processes():
        try:
            out[pid] = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            continue
    return out


def family(pid: int) -> dict[int, int]:
    """``pid`` and all its descendants: pid -> start time (so that a reused pid is not mistaken for it)."""
    kids: dict[int, list[int]] = {}
    for p, ppid, _ in processes():
        kids.setdefault(ppid, []).append(p)
    found, stack = [pid], [pid]
    while stack:
        for k in kids.get(stack.pop(), []):
            found.append(k)
            stack.append(k)
    starts = start_times()
    return {p: starts[p] for p in found if p in starts}


def survivors(old: dict[int, int]) -> list[int]:
    now = start_times()
    return [p for p, start in old.items() if now.get(p) == start and alive(p)]


def workers_of(pid: int) -> list[int]:
    """The leader's worker processes (its children; uvicorn's and celery's without helpers that are not)."""
    kids = [p for p, ppid, zombie in processes() if ppid == pid and not zombie]
    return [p for p in kids if b"resource_tracker" not in cmdline(p)]


def cmdline(pid: int) -> bytes:
    """A process's command line; empty when it has just gone (a worker being replaced)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


@dataclass
class Row:
    program: str
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, phase: str, zombies: int, left: int, ready_s: list[float], reason: str) -> None:
        self.phases[phase] = {"zombies": zombies, "left": left, "reason": reason,
                              "ready_s": round(statistics.median(ready_s), 2) if ready_s else None}  # fmt: skip


def ready_again(d: Daemon, path: str, old_pid: int | None) -> float:
    t0 = time.monotonic()
    wait_until(lambda: (n := d.node(path))["state"] == "running" and n["pid"] not in (None, old_pid), 120,
               f"{path} ready again")  # fmt: skip
    return time.monotonic() - t0


def settle(d: Daemon, prog: Program, path: str) -> int:
    """Running, with all its workers: its pid."""
    pid = int(wait_until(lambda: d.node(path)["state"] == "running" and d.node(path)["pid"], 120, f"{path} up"))
    if prog.workers:
        wait_until(lambda: len(workers_of(pid)) >= prog.workers, 60, f"{path}'s {prog.workers} workers")
    return pid


def no_zombies(d: Daemon) -> int:
    wait_until(lambda: not zombies_of(d.proc.pid), 1.0, "no zombie under the daemon a second later")
    return len(zombies_of(d.proc.pid))


@pytest.mark.parametrize("prog", PROGRAMS, ids=lambda p: p.name)
def test_a_real_program_crashed_every_way_leaves_nothing_behind(prog: Program, tmp_path: Path) -> None:
    port, broker = low_port(), low_port()  # not from the ephemeral range the daemon's admin port comes from

    def fill(text: str) -> str:
        return text.format(port=port, tmp=tmp_path, broker=broker, venv=VENV)

    for need in prog.needs:
        if shutil.which(fill(need)) is None:
            pytest.skip(f"{fill(need)} is not installed (scripts/bootstrap.sh installs it)")
    for name, text in prog.files.items():
        (tmp_path / name).write_text(fill(text) if name in TEMPLATES else text)
    d = Daemon(tmp_path, fill(prog.toml))
    row, path = Row(prog.name), prog.name
    watch = ZombieWatch(d.proc.pid)
    try:
        d.wait_ready()
        leader = settle(d, prog, path)

        times: list[float] = []
        left = 0
        for _ in range(LEADER_KILLS):  # kill -9 of the leader: it and every process it had go; it comes back
            old = family(leader)
            os.kill(leader, signal.SIGKILL)
            times.append(ready_again(d, path, leader))
            wait_until(lambda old=old: not survivors(old), 10, "the old incarnation's processes gone")
            left += len(survivors(old))
            leader = settle(d, prog, path)
        row.add("kill -9 leader", no_zombies(d), left, times, d.node(path)["last_exit"]["detail"])
        last = d.node(path)["last_exit"]
        assert (last["reason"], last["detail"]) == ("abnormal", "killed by SIGKILL"), last

        if prog.workers:
            times = []
            for _ in range(WORKER_KILLS):  # kill -9 of one worker: the program's own business; the leader stays
                victim = workers_of(leader)[0]
                t0 = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                if prog.respawns:
                    wait_until(lambda v=victim, m=leader: v not in workers_of(m) and len(workers_of(m)) >= prog.workers,
                               60, "the worker replaced by its master")  # fmt: skip
                    assert d.node(path)["pid"] == leader
                else:  # a shell's job is not replaced: the shell waits for the other, and is restarted to go on
                    wait_until(lambda v=victim: not alive(v), 10, "the job gone")
                    assert d.request("POST", f"/children/{path}/restart")[0] == 200
                    leader = settle(d, prog, path)
                times.append(time.monotonic() - t0)
            row.add("kill -9 worker", no_zombies(d), 0, times, "leader kept" if prog.respawns else "-")

        times, left = [], 0
        for _ in range(RESTARTS):  # the operator's restart
            old = family(leader)
            t0 = time.monotonic()
            code, body, _ = d.request("POST", f"/children/{path}/restart")
            assert code == 200, body
            times.append(time.monotonic() - t0)
            left += len(survivors(old))
            leader = settle(d, prog, path)
        detail = d.node(path)["last_exit"]["detail"]
        row.add("operator restart", no_zombies(d), left, times, detail)
        assert detail.startswith("stopped by SIG"), detail

        old = family(leader)  # a reload: a changed table restarts it
        d.config.write_text(d.config.read_text().replace(f'id = "{path}"', f'id = "{path}"\nenv = {{ GEN = "2" }}'))
        t0 = time.monotonic()
        code, doc, _ = d.request("POST", "/reload?wait=1")
        assert code == 200 and {"path": path, "change": "changed"} in doc["changes"], doc
        leader = settle(d, prog, path)
        row.add("reload", no_zombies(d), len(survivors(old)), [time.monotonic() - t0], "changed: restarted")

        everything = {**family(d.proc.pid)}  # kill -9 of the daemon: the guardian takes every process with it
        everything.pop(d.proc.pid)
        d.proc.kill()
        d.proc.wait()
        wait_until(lambda: not survivors(everything), 10, "every process of the tree gone")
        row.add("kill -9 daemon", 0, len(survivors(everything)), [], "all gone")
    finally:
        oldest = watch.stop()
        d.stop()  # after a kill -9 of the daemon: closes its log
        ARTIFACTS.mkdir(exist_ok=True)
        with (ARTIFACTS / "matrix.json").open("a") as f:
            f.write(json.dumps({"program": prog.name, "oldest_zombie_s": round(oldest, 3), **row.phases}) + "\n")
    assert oldest < 1.0, f"a zombie lived {oldest:.2f}s under the daemon"
    assert all(p["zombies"] == 0 and p["left"] == 0 for p in row.phases.values()), row.phases


def test_gunicorn_reloads_on_hup_without_a_failed_request(tmp_path: Path) -> None:
    """reload_signal: a daemon reload that leaves gunicorn's table unchanged sends it SIGHUP: its workers are
    replaced, its master (and the held socket) kept, and a client hammering it never sees an error."""
    if not (VENV / "gunicorn").exists():
        pytest.skip("gunicorn is not installed (scripts/bootstrap.sh installs it)")
    prog = PROGRAMS[0]
    port = low_port()
    (tmp_path / "wsgiapp.py").write_text(WSGI)
    d = Daemon(tmp_path, prog.toml.format(port=port, tmp=tmp_path, venv=VENV))
    ok, failed, stop = [0], [0], threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    ok[0] += r.status == 200
            except OSError:
                failed[0] += 1

    try:
        d.wait_ready()
        master = settle(d, prog, "gunicorn")
        before = set(workers_of(master))
        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: ok[0] > 50, 30, "requests flowing")
        code, doc, _ = d.request("POST", "/reload?wait=1")
        assert code == 200 and doc["changes"] == [{"path": "gunicorn", "change": "signalled SIGHUP"}], doc
        wait_until(lambda: not before & set(workers_of(master)) and len(workers_of(master)) == 3, 60,
                   "every worker replaced")  # fmt: skip
        served = ok[0]
        wait_until(lambda: ok[0] > served + 50, 30, "requests flowing after the reload")
        stop.set()
        for t in threads:
            t.join(15)
        assert d.node("gunicorn")["pid"] == master and d.node("gunicorn")["restarts"] == 0
        print(f"\ngunicorn HUP: {ok[0]} requests served, {failed[0]} failed; master {master} kept")
        assert failed[0] == 0
    finally:
        stop.set()
        d.stop()
