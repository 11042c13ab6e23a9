"""The admin port under a flood of keep-alive clients: requests per second with 500 clients next to 64 in the same
run, the clients' errors, and ``/livez`` latency (a fresh connection every 50 ms) meanwhile.

The load is ``wrk`` (Debian's package) in its own process: ``GET /status`` on keep-alive connections, as fast as
the port answers. Target: 500 clients get at least 80 % of 64 clients' requests per second, with no errors but
client-side timeouts, and ``/livez`` p99 at most 50 ms throughout.

    python benchmarks/flood.py [--seconds 10] [--src path/to/src]   # --src: run another checkout's daemon
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TREE = "".join(f'[[tree.children]]\nid = "c{i}"\ncommand = ["sleep", "100000"]\n' for i in range(10))


class Prober(threading.Thread):
    """GET /livez on a new connection every 50 ms, with curl (a C client: a Python client's own scheduling delays
    on two busy cores would be most of what it measured); latencies and failures."""

    def __init__(self, admin: str) -> None:
        super().__init__(daemon=True)
        self.admin = admin
        self.latencies: list[float] = []
        self.failures = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            t0 = time.perf_counter()
            curl = ["curl", "-s", "-o", "/dev/null", "-m", "10", "-w", "%{http_code} %{time_total}"]
            done = subprocess.run([*curl, f"http://{self.admin}/livez"], capture_output=True, text=True, check=False)
            code, _, took = done.stdout.partition(" ")
            if done.returncode == 0 and code == "200":
                self.latencies.append(float(took))
            else:
                self.failures += 1
            self.done.wait(max(0.0, 0.05 - (time.perf_counter() - t0)))


def wrk(admin: str, connections: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "5s", "--latency",
         f"http://{admin}/status"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = (int(g) for g in errors.groups()) if errors else (0, 0, 0, 0)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "connect_errors": connect, "read_errors": read, "write_errors": write,
            "timeouts": timeout, "non_2xx": int(non2xx.group(1)) if non2xx else 0}  # fmt: skip


def run(connections: int, seconds: float, admin: str) -> dict[str, Any]:
    prober = Prober(admin)
    prober.start()
    try:
        result = wrk(admin, connections, seconds)
    finally:
        prober.done.set()
        prober.join(15)
    lat = sorted(prober.latencies)
    result["livez_p50_ms"] = round(statistics.median(lat) * 1000, 1) if lat else None
    result["livez_p99_ms"] = round(lat[max(0, math.ceil(len(lat) * 0.99) - 1)] * 1000, 1) if lat else None
    result["livez_samples"] = len(lat)
    result["livez_failures"] = prober.failures
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--src", help="the src/ directory of the checkout whose daemon runs (default: this one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("wrk", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install {tool}")
    src = Path(args.src or Path(__file__).resolve().parents[1] / "src").resolve()
    tmp = Path(tempfile.mkdtemp(prefix="mcp-flood-"))
    admin = f"127.0.0.1:{free_port()}"
    (tmp / "c.toml").write_text(f'[daemon]\nadmin = "{admin}"\nlog_format = "json"\n[tree]\n{TREE}')
    env = dict(os.environ, PYTHONPATH=str(src))
    daemon = subprocess.Popen([sys.executable, "-m", "mcp_supervisor.cli", "run", "--config", str(tmp / "c.toml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{admin}/readyz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        rows = {n: run(n, args.seconds, admin) for n in (64, 500)}
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = rows[500]["rps"] / rows[64]["rps"] if rows[64]["rps"] else 0.0
    if args.json:
        for n, r in rows.items():
            print(json.dumps({"name": f"flood_{n}_clients", **r}))
        print(json.dumps({"name": "flood_rps_ratio_500_vs_64", "value": round(ratio, 2), "target": 0.8}))
        return
    print(f"daemon from {src}")
    print(f"{'clients':>8} {'req/s':>9} {'errors (c/r/w)':>15} {'timeouts':>9} {'non-2xx':>8} "
          f"{'livez p50':>10} {'livez p99':>10} {'livez fail':>10}")  # fmt: skip
    for n, r in rows.items():
        errs = f"{r['connect_errors']}/{r['read_errors']}/{r['write_errors']}"
        print(f"{n:>8} {r['rps']:>9.0f} {errs:>15} {r['timeouts']:>9} {r['non_2xx']:>8} "
              f"{r['livez_p50_ms']!s:>8}ms {r['livez_p99_ms']!s:>8}ms {r['livez_failures']:>10}")  # fmt: skip
    print(f"500 clients get {ratio:.2f}x the requests per second of 64 (target >= 0.80)")


if __name__ == "__main__":
    main()
