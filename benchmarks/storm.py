"""The daemon under a crash storm: 50 OS children running ``false`` (exit 1 at once, restarted forever).

For each condition — stdout to a file; stdout to a pipe read at 1 KB/s (a journald that cannot keep up); the same
with both cores busy — it prints restarts per second next to bare spawns of the same command in the same run, the
latency of ``/status`` and ``/livez`` throughout (sampled every 50 ms), how long a reload to a quiet config takes to
bring all 50 children up, and how long SIGTERM takes to end the daemon.

    python benchmarks/storm.py [--seconds 10] [--src path/to/src]   # --src: run another checkout's daemon
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

N = 50
TOKEN = "storm-benchmark-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(admin: str, token: Path, command: str) -> str:
    head = f'[daemon]\nadmin = "{admin}"\nadmin_token_file = "{token}"\nlog_format = "json"\n'
    tree = "[tree]\nintensity = 100000000\nperiod = 1\n"
    return head + tree + "".join(f'[[tree.children]]\nid = "c{i}"\ncommand = {command}\n' for i in range(N))


def request(admin: str, path: str, method: str = "GET", timeout: float = 60) -> tuple[float, dict[str, Any]]:
    req = urllib.request.Request(f"http://{admin}{path}", method=method)
    if method == "POST":
        req.add_header("Authorization", f"Bearer {TOKEN}")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = json.loads(resp.read())
    return time.perf_counter() - t0, body


def bare_spawns(seconds: float) -> float:
    """Sequential spawn-and-reap of the same command line the daemon runs (setpriv sets the parent-death signal)."""
    setpriv = shutil.which("setpriv")
    argv = [setpriv, "--pdeathsig", "KILL", "--", "false"] if setpriv else ["false"]
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        subprocess.Popen(argv, start_new_session=True, close_fds=True).wait()
        n += 1
    return n / seconds


def spin(until: float) -> None:
    while time.monotonic() < until:
        pass


def run(condition: str, seconds: float, src: str | None) -> dict[str, float | str]:
    tmp = Path(tempfile.mkdtemp(prefix="mcp-storm-"))
    admin = f"127.0.0.1:{free_port()}"
    token = tmp / "token"
    token.write_text(TOKEN)
    cfg = tmp / "storm.toml"
    cfg.write_text(config(admin, token, '["false"]'))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if src:
        env["PYTHONPATH"] = src
    slow = condition != "stdout to a file"
    out = subprocess.PIPE if slow else open(tmp / "out.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mcp_supervisor.cli", "run", "--config", str(cfg)],
                            stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    if slow:

        def reader() -> None:  # 1 KB/s
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(1024):  # type: ignore[attr-defined]
                time.sleep(len(chunk) / 1024)

        threading.Thread(target=reader, daemon=True).start()
    spinners: list[multiprocessing.Process] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request(admin, "/livez", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if condition.endswith("both cores busy"):
            until = time.monotonic() + seconds + 120
            spinners = [multiprocessing.Process(target=spin, args=(until,)) for _ in range(2)]
            for p in spinners:
                p.start()

        def restarts() -> int:
            return sum(c["restarts"] for c in request(admin, "/status")[1]["children"])

        r0, t0 = restarts(), time.monotonic()
        status_lat, livez_lat = [], []
        while time.monotonic() - t0 < seconds:
            status_lat.append(request(admin, "/status")[0])
            livez_lat.append(request(admin, "/livez")[0])
            time.sleep(0.05)
        rate = (restarts() - r0) / (time.monotonic() - t0)
        cfg.write_text(config(admin, token, '["sleep", "1000"]'))
        t1 = time.monotonic()
        request(admin, "/reload?wait=1", "POST")
        while not all(c["state"] == "running" for c in request(admin, "/status")[1]["children"]):
            time.sleep(0.02)
        reload_s = time.monotonic() - t1
        t2 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
            stop_s: float | str = round(time.monotonic() - t2, 2)
        except subprocess.TimeoutExpired:
            stop_s = "did not stop in 60 s"
    finally:
        for p in spinners:
            p.terminate()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "restarts_per_s": round(rate),
        "status_ms_median": round(statistics.median(status_lat) * 1000, 1),
        "status_ms_p99": round(sorted(status_lat)[max(0, math.ceil(len(status_lat) * 0.99) - 1)] * 1000, 1),
        "status_ms_max": round(max(status_lat) * 1000, 1),
        "livez_ms_median": round(statistics.median(livez_lat) * 1000, 1),
        "livez_ms_max": round(max(livez_lat) * 1000, 1),
        "reload_to_quiet_s": round(reload_s, 2),
        "sigterm_s": stop_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--src", help="the src/ directory of another checkout to run instead of the installed one")
    args = ap.parse_args()
    bare = bare_spawns(5.0)
    print(f"baseline: bare spawns of the same command, sequential: {bare:.0f}/s")
    print(f"{'condition':38} {'restarts/s':>10} {'ratio':>6} {'/status ms med/p99/max':>23} {'/livez ms med/max':>18} "
          f"{'reload s':>8} {'SIGTERM s':>9}")  # fmt: skip
    for condition in ("stdout to a file", "stdout read at 1 KB/s", "stdout read at 1 KB/s, both cores busy"):
        r = run(condition, args.seconds, args.src)
        print(f"{condition:38} {r['restarts_per_s']:>10} {float(r['restarts_per_s']) / bare:>6.2f} "
              f"{r['status_ms_median']:>7}/{r['status_ms_p99']}/{r['status_ms_max']:<8} "
              f"{r['livez_ms_median']:>7}/{r['livez_ms_max']:<10} "
              f"{r['reload_to_quiet_s']:>8} {r['sigterm_s']:>9}")  # fmt: skip


if __name__ == "__main__":
    main()
