"""The supervision core next to Erlang/OTP, the same scenarios in one run.

    python benchmarks/vs_otp.py            # a table
    python benchmarks/vs_otp.py --json     # one JSON object per line
    python benchmarks/vs_otp.py --quick    # smaller counts

The OTP side (``benchmarks/otp_bench.erl``: gen_server workers under a ``supervisor``) is compiled with ``erlc`` and
run with ``erl +S 1:1`` — one scheduler, as the Python side has one event loop — with logging off on both sides.
Scenarios: restart of a crashing worker (it raises) when crashes are rare (a fresh supervisor every 100) and in a
10,000-crash storm within one intensity window; 1,000 children crashing at once until all answer again; call round
trip; cast throughput; start and stop of 10,000 children; memory per idle child. Ratio = ours / OTP (for times
lower is better, for the cast rate higher is better).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from core import Crashy, cast_supervised, crash_cycles, many_supervised  # benchmarks/core.py
from mcp_supervisor.core import SupervisorFlags, SupervisorSpec, Tree, WorkerSpec

HERE = Path(__file__).resolve().parent

STORM = SupervisorFlags(intensity=10**8, period=3600)


def run_otp(quick: bool) -> dict[str, float]:
    if shutil.which("erlc") is None or shutil.which("erl") is None:
        sys.exit("Erlang/OTP is not installed (erlc, erl): apt-get install erlang-base")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["erlc", "-o", tmp, str(HERE / "otp_bench.erl")], check=True)
        args = "[quick]" if quick else "[]"
        out = subprocess.run(["erl", "+S", "1:1", "-noshell", "-pa", tmp, "-eval", f"otp_bench:main({args})"],
                             check=True, capture_output=True, text=True, timeout=600).stdout  # fmt: skip
    figures = {}
    for line in out.splitlines():
        name, value, _unit = line.split()
        figures[name] = float(value)
    return figures


# -- our side ----------------------------------------------------------------------------------------------------
async def restart_rare(rounds: int) -> float:
    times: list[float] = []
    for _ in range(rounds):
        crashy = Crashy()
        tree = Tree(SupervisorSpec(id="root", flags=STORM, children=[WorkerSpec(id="w", run=crashy.run)]))
        await tree.start()
        times += await crash_cycles(tree, crashy, "w", 100)
        await tree.stop()
    return statistics.median(times) * 1e6


async def restart_storm(n: int) -> tuple[float, float]:
    crashy = Crashy()
    tree = Tree(SupervisorSpec(id="root", flags=STORM, children=[WorkerSpec(id="w", run=crashy.run)]))
    await tree.start()
    t0 = time.perf_counter()
    times = await crash_cycles(tree, crashy, "w", n)
    total = time.perf_counter() - t0
    await tree.stop()
    return total / n * 1e6, statistics.mean(times[-1000:]) * 1e6


async def crash_all(n: int) -> float:
    crashy = Crashy()
    kids = [WorkerSpec(id=f"c{i}", run=crashy.run) for i in range(n)]
    tree = Tree(SupervisorSpec(id="root", flags=STORM, children=kids))
    await tree.start()
    loop = asyncio.get_running_loop()
    for k in kids:
        crashy.ready[k.id] = loop.create_future()
    mailboxes = [tree.mailbox(k.id) for k in kids]
    t0 = time.perf_counter()
    for mb in mailboxes:
        mb.cast_nowait("crash")
    for k in kids:
        await crashy.ready[k.id]
        await tree.mailbox(k.id).call(1)
    dt = time.perf_counter() - t0
    await tree.stop()
    return dt * 1e3


async def call_rtt(n: int) -> float:
    crashy = Crashy()
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="e", run=crashy.run)]))
    await tree.start()
    mb = tree.mailbox("e")
    for i in range(1000):
        await mb.call(i)
    t0 = time.perf_counter()
    for i in range(n):
        await mb.call(i)
    dt = time.perf_counter() - t0
    await tree.stop()
    return dt / n * 1e6


async def ours(quick: bool) -> dict[str, float]:
    rare = await restart_rare(3 if quick else 20)
    storm_mean, storm_last = await restart_storm(2000 if quick else 10_000)
    start, stop, _ = await many_supervised(10_000, False)
    _, _, mem = await many_supervised(10_000, True)  # tracemalloc slows starting: memory in a run of its own
    return {
        "restart_rare_median": rare,
        "restart_storm_mean": storm_mean,
        "restart_storm_last1000_mean": storm_last,
        "crash_1000_at_once": await crash_all(1000),
        "call_rtt": await call_rtt(10_000 if quick else 100_000),
        "cast_rate": await cast_supervised(100_000 if quick else 1_000_000),
        "start_10000": start * 1e3,
        "stop_10000": stop * 1e3,
        "memory_per_child": mem,
    }


UNITS = {"restart_rare_median": "us", "restart_storm_mean": "us", "restart_storm_last1000_mean": "us",
         "crash_1000_at_once": "ms", "call_rtt": "us", "cast_rate": "msg/s", "start_10000": "ms", "stop_10000": "ms",
         "memory_per_child": "bytes"}  # fmt: skip


def run(factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, dict[str, float]]) -> Any:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    otp = run_otp(args.quick)
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop

        loops.append(("uvloop", uvloop.new_event_loop))
    except ImportError:
        pass
    rows = []
    for loop_name, factory in loops:
        for name, value in run(factory, ours(args.quick)).items():
            rows.append({"name": name, "loop": loop_name, "value": round(value, 3), "unit": UNITS[name],
                         "otp": round(otp[name], 3), "ratio": round(value / otp[name], 3)})  # fmt: skip
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    print(f"{'scenario':<30} {'loop':<8} {'ours':>12} {'OTP 25':>12} {'ratio':>7}  unit")
    for r in rows:
        print(f"{r['name']:<30} {r['loop']:<8} {r['value']:>12.2f} {r['otp']:>12.2f} {r['ratio']:>7.2f}  {r['unit']}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
