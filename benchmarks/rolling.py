"""Zero-downtime restarts, measured: requests per second through a socket the daemon holds, in steady state and
during back-to-back rolling restarts of 4 instances (same run, ratio and error count), and the time a rolling
restart adds per instance over the program's own start-to-ready time.

    python benchmarks/rolling.py [--json] [--quick]

The daemon runs as ``mcp-supervisor run`` in its own process (uvloop); the instances are
``examples/socket_activated_server.py``; the load is 16 client loops on loopback in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "examples" / "socket_activated_server.py"
INSTANCES = 4
CLIENTS = 16
TOKEN = "benchmark-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp: Path, admin: int, port: int) -> str:
    ready = f'ready = {{ command = ["test", "-e", "{tmp}/ready-{{instance}}"], timeout = 10 }}'
    return f"""
[daemon]
admin = "127.0.0.1:{admin}"
admin_token_file = "{tmp}/token"
log_level = "warning"

[[daemon.sockets]]
name = "web"
listen = "127.0.0.1:{port}"

[tree]
intensity = 1000
period = 5

[[tree.children]]
id = "web"
command = ["{sys.executable}", "{SERVER}", "--ready-file", "{tmp}/ready-{{instance}}"]
{ready}
sockets = ["web"]
instances = {INSTANCES}
"""


def post(admin: int, path: str) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method="POST")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


class Load:
    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.errors = 0
        self.running = True

    async def client(self) -> None:
        while self.running:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                data = await asyncio.wait_for(reader.read(), 30)
                writer.close()
                if data.startswith(b"HTTP/1.0 200"):
                    self.ok += 1
                else:
                    self.errors += 1
            except (OSError, TimeoutError):
                self.errors += 1

    async def window(self, seconds: float, during: Any = None) -> tuple[float, int, int]:
        """Requests per second and errors over ``seconds`` (while ``during`` runs, if given) and how often it ran."""
        ok0, err0 = self.ok, self.errors
        began = time.perf_counter()
        runs = 0
        if during is None:
            await asyncio.sleep(seconds)
        else:
            while time.perf_counter() - began < seconds:
                await during()
                runs += 1
        took = time.perf_counter() - began
        return (self.ok - ok0) / took, self.errors - err0, runs


def own_times(tmp: Path, rounds: int) -> tuple[float, float]:
    """Median seconds from spawn to the ready file, and from SIGTERM to exit, for the program alone."""
    starts, stops = [], []
    for i in range(rounds):
        ready = tmp / f"own-{i}"
        began = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(free_port()), "--ready-file", str(ready)],
                                stdout=subprocess.DEVNULL)  # fmt: skip
        while not ready.exists():
            time.sleep(0.001)
        starts.append(time.perf_counter() - began)
        began = time.perf_counter()
        proc.terminate()
        proc.wait()
        stops.append(time.perf_counter() - began)
    return statistics.median(starts), statistics.median(stops)


async def measure(quick: bool) -> dict[str, float]:
    seconds = 3.0 if quick else 10.0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "token").write_text(TOKEN)
        admin, port = free_port(), free_port()
        (tmp / "supervision.toml").write_text(config(tmp, admin, port))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mcp_supervisor.cli", "run", "--config", str(tmp / "supervision.toml")],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not all((tmp / f"ready-{i}").exists() for i in range(INSTANCES)):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("the daemon did not start its instances")
                await asyncio.sleep(0.05)
            load = Load(port)
            clients = [asyncio.ensure_future(load.client()) for _ in range(CLIENTS)]
            await load.window(1.0)  # warm up
            steady, steady_err, _ = await load.window(seconds)
            roll_times: list[float] = []

            async def one_roll() -> None:
                began = time.perf_counter()
                result = await asyncio.to_thread(post, admin, "/children/web/restart?rolling=1")
                if not result.get("ok"):
                    raise RuntimeError(f"a roll failed: {result}")
                roll_times.append(time.perf_counter() - began)

            rolling, rolling_err, rolls = await load.window(seconds, one_roll)
            load.running = False
            await asyncio.gather(*clients)
        finally:
            daemon.terminate()
            daemon.wait(60)
        own_start, own_stop = own_times(tmp, 5 if quick else 15)
    per_instance = statistics.median(roll_times) / INSTANCES
    return {
        "rps_steady": steady,
        "errors_steady": steady_err,
        "rps_rolling": rolling,
        "errors_rolling": rolling_err,
        "rolls": rolls,
        "rps_ratio_rolling_vs_steady": rolling / steady,
        "roll_per_instance_ms": per_instance * 1e3,
        "own_start_ms": own_start * 1e3,
        "own_stop_ms": own_stop * 1e3,
        "added_per_instance_ms": (per_instance - own_start - own_stop) * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="3-second windows (a smoke run)")
    args = parser.parse_args()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        figures = runner.run(measure(args.quick))
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"held socket, {INSTANCES} instances, {CLIENTS} clients on loopback")
    print(f"  steady:  {figures['rps_steady']:8.0f} req/s   errors {figures['errors_steady']}")
    print(
        f"  rolling: {figures['rps_rolling']:8.0f} req/s   errors {figures['errors_rolling']}   "
        f"({figures['rolls']} rolling restarts back to back)   ratio {figures['rps_ratio_rolling_vs_steady']:.2f}x"
    )
    print(f"  a rolling restart: {figures['roll_per_instance_ms']:.1f} ms per instance; the program alone takes "
          f"{figures['own_start_ms']:.1f} ms to be ready and {figures['own_stop_ms']:.1f} ms to stop: "
          f"{figures['added_per_instance_ms']:.1f} ms added by the supervisor")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
