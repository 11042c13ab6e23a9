"""What ``isolation = "process"`` costs, each figure next to its in-process baseline measured in the same run:

- crash to ready: from the daemon's record of a ``kill -9`` of an isolated subtree's process (``ChildExited``) to
  its record of the subtree running again (``ChildStarted``: forked from the fork server, its tree started, its
  ready line read); next to the same for an in-process worker that raises, to a fresh interpreter importing what
  the isolated process imports (``python -c "import mcp_supervisor.daemon.isolated"``: what an exec'd restart pays
  before it even starts its tree), and to an isolated process exec'd by hand until its ready line;
- an operator's restart (``POST /children/PATH/restart``: graceful stop, start, ready) of both;
- a ``call`` round trip from a worker to a named mailbox in the daemon: from an isolated subtree (JSON over its
  control channel) and from an in-process worker (both on uvloop when installed).

    python benchmarks/isolation.py [--json] [--quick] [--restarts N] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import print_rows

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]
from mcp_supervisor.config.children import ISOLATED_READY
from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon

WORKER = """
import asyncio, json, os, time
from mcp_supervisor.core import Call

def echo(config):
    async def run(ctx):
        ctx.register("echo")
        ctx.started()
        while True:
            msg = await ctx.receive()
            if isinstance(msg, Call):
                msg.reply(msg.payload)
    return run

def fragile(config):
    async def run(ctx):
        ctx.started()
        while not os.path.exists(config["trigger"]):
            await asyncio.sleep(0.002)
        os.unlink(config["trigger"])
        raise RuntimeError("crashed on purpose")
    return run

def caller(config):
    async def run(ctx):
        ctx.started()
        while not os.path.exists(config["go"]) or os.path.exists(config["out"]):  # once: not at each restart
            await asyncio.sleep(0.01)
        for _ in range(200):  # warm up
            await ctx.call("echo", {"n": 0})
        times = []
        for i in range(config["calls"]):
            t0 = time.perf_counter_ns()
            await ctx.call("echo", {"n": i})
            times.append(time.perf_counter_ns() - t0)
        with open(config["out"] + ".tmp", "w") as f:
            json.dump(times, f)
        os.replace(config["out"] + ".tmp", config["out"])
        await asyncio.Event().wait()
    return run
"""


def tree(where: Path, calls: int) -> str:
    def caller(name: str) -> str:
        return f'{{ go = "{where / "go"}", out = "{where / name}.json", calls = {calls} }}'

    return f"""
[tree]
intensity = 100000
period = 1
[[tree.children]]
id = "echo"
worker = "benchworker:echo"
[[tree.children]]
id = "inproc"
intensity = 100000
period = 1
[[tree.children.children]]
id = "w"
worker = "benchworker:fragile"
config = {{ trigger = "{where / "trigger"}" }}
[[tree.children.children]]
id = "caller"
worker = "benchworker:caller"
config = {caller("inproc")}
[[tree.children]]
id = "iso"
isolation = "process"
shutdown = 5
[[tree.children.children]]
id = "w"
worker = "mcp_supervisor.testing.workers:steady"
[[tree.children]]
id = "calls"
isolation = "process"
[[tree.children.children]]
id = "caller"
worker = "benchworker:caller"
config = {caller("iso")}
"""


def recent(d: Daemon, kind: str, path: str) -> list[dict[str, Any]]:
    """The last few ``kind`` events of ``path`` (a small request: the poll does not load the daemon it measures)."""
    return [e for e in d.events(kind, path, limit=5) if e["path"] == path]


def first_after(d: Daemon, kind: str, path: str, t0: float) -> float:
    """The daemon's own timestamp of the first ``kind`` event of ``path`` after ``t0`` (wall clock)."""
    found = lambda: min((e["at"] for e in recent(d, kind, path) if e["at"] > t0), default=None)  # noqa: E731
    return float(wait_until(found, 30, f"{kind} of {path}"))


def crashes(d: Daemon, path: str, crash: Callable[[], None], n: int) -> tuple[list[float], list[float]]:
    """For each crash: from the crash (the moment we caused it) to the daemon's record of the child running again,
    and from the daemon's record of the exit (``ChildExited``) to that record."""
    whole, restart = [], []
    for _ in range(n):
        t0 = time.time()
        crash()
        crashed = first_after(d, "ChildExited", path, t0)
        started = first_after(d, "ChildStarted", path, crashed)
        whole.append(started - t0)
        restart.append(started - crashed)
    return whole, restart


def timed_restarts(d: Daemon, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        code, body, _ = d.request("POST", f"/children/{path}/restart")
        out.append(time.perf_counter() - t0)
        assert code == 200, body
    return out


def fresh_imports(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mcp_supervisor.daemon.isolated"], check=True)
        out.append(time.perf_counter() - t0)
    return out


def execd_ready(config: Path, env: dict[str, str], n: int) -> list[float]:
    """An isolated process exec'd by hand (what the daemon does without its fork server) until its ready line."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "mcp_supervisor.daemon.isolated", str(config), "iso"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == ISOLATED_READY:
                out.append(time.perf_counter() - t0)
                break
        proc.terminate()
        proc.wait(30)
    return out


def raw_round_trips(n: int) -> list[float]:
    """The floor under a call across: bytes to another process over a socket pair and back, uvloop streams on both
    sides (no framing, no JSON, no mailbox), in microseconds."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo side (forked before this process runs any loop)
        ours.close()

        async def echo() -> None:
            reader, writer = await asyncio.open_unix_connection(sock=theirs)
            while data := await reader.read(4096):
                writer.write(data)

        (uvloop.run if uvloop else asyncio.run)(echo())
        os._exit(0)
    theirs.close()

    async def ping() -> list[float]:
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        out = []
        for i in range(n + 200):
            t0 = time.perf_counter_ns()
            writer.write(b'{"t":"req","id":1,"msg":{"n":%d}}' % i)
            await reader.read(4096)
            if i >= 200:  # after a warm-up, as the callers do
                out.append((time.perf_counter_ns() - t0) / 1000)
        writer.close()
        return out

    try:
        return (uvloop.run if uvloop else asyncio.run)(ping())
    finally:
        os.waitpid(pid, 0)


def call_times(where: Path, name: str) -> list[float]:
    path = where / f"{name}.json"
    wait_until(path.exists, 120, f"the {name} caller's figures")
    return [t / 1000 for t in json.loads(path.read_text())]


def ms(value: float) -> float:
    return round(value * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 restarts of each, 500 calls")
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    n, calls = (3, 500) if args.quick else (args.restarts, args.calls)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        (where / "benchworker.py").write_text(WORKER)
        env = {"PYTHONPATH": os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")])}
        d = Daemon(where, tree(where, calls), env=env)
        try:
            d.wait_ready()
            (where / "go").touch()
            call_iso, call_local = call_times(where, "iso"), call_times(where, "inproc")
            kill = lambda: os.kill(d.node("iso")["pid"], signal.SIGKILL)  # noqa: E731
            crash_iso, exit_iso = map(statistics.median, crashes(d, "iso", kill, n))
            # an in-process worker that raises: it notices its trigger file within 2 ms, so from its exit on
            crash_local = statistics.median(crashes(d, "inproc/w", (where / "trigger").touch, n)[1])
            restart_local = statistics.median(timed_restarts(d, "inproc/w", n))
            restart_iso = statistics.median(timed_restarts(d, "iso", n))
            config = d.config
            execd = statistics.median(execd_ready(config, {**os.environ, **env}, n))
        finally:
            d.stop()
    fresh = statistics.median(fresh_imports(n))
    raw = raw_round_trips(calls)
    local_call, iso_call = statistics.median(call_local), statistics.median(call_iso)
    rows: list[dict[str, Any]] = [
        {"name": "crash_to_ready_in_process_worker_median", "value": ms(crash_local), "unit": "ms"},
        {"name": "crash_to_ready_isolated_subtree_forked_median", "value": ms(crash_iso), "unit": "ms",
         "ratio": round(crash_iso / crash_local, 1)},
        {"name": "exit_recorded_to_ready_isolated_subtree_forked_median", "value": ms(exit_iso), "unit": "ms",
         "ratio": round(exit_iso / crash_local, 1)},
        {"name": "isolated_subtree_execd_until_ready_median", "value": ms(execd), "unit": "ms",
         "ratio": round(execd / crash_local, 1)},
        {"name": "fresh_interpreter_with_its_imports_median", "value": ms(fresh), "unit": "ms",
         "ratio": round(fresh / crash_local, 1)},
        {"name": "operator_restart_in_process_worker_median", "value": ms(restart_local), "unit": "ms",
         "ratio": round(restart_local / crash_local, 1)},
        {"name": "operator_restart_isolated_subtree_median", "value": ms(restart_iso), "unit": "ms",
         "ratio": round(restart_iso / crash_local, 1)},
        {"name": "call_round_trip_in_process_median", "value": round(local_call, 1), "unit": "us",
         "note": f"p99 {round(statistics.quantiles(call_local, n=100)[98], 1)} us"},
        {"name": "raw_round_trip_to_another_process_median", "value": round(statistics.median(raw), 1), "unit": "us",
         "note": "uvloop streams over a socket pair: the floor"},
        {"name": "call_round_trip_across_isolation_median", "value": round(iso_call, 1), "unit": "us",
         "note": f"{iso_call / local_call:.1f}x in-process; p99 "
                 f"{round(statistics.quantiles(call_iso, n=100)[98], 1)} us"},
    ]  # fmt: skip
    print_rows(rows, args.json, "the in-process crash to ready")


if __name__ == "__main__":
    main()
