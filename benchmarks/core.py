"""Benchmarks of the supervision core, each next to a bare-asyncio baseline doing the same work, in one run.

    python benchmarks/core.py           # a table
    python benchmarks/core.py --json    # one JSON object per line: name, value, unit, baseline, baseline_value, ratio

Every figure is measured on the default asyncio loop and on uvloop (when installed). Ratios are
supervisor / baseline for latencies and times (lower is better) and for throughputs (higher is better).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from typing import Any

from mcp_supervisor.core import (
    Call,
    ChildStarted,
    ProcessSpec,
    SupervisorFlags,
    SupervisorSpec,
    Tree,
    WorkerSpec,
)

RESULTS: list[dict[str, Any]] = []
LOOSE = SupervisorFlags(intensity=10**9, period=1)


def record(name: str, value: float, unit: str, baseline: str, baseline_value: float, loop: str) -> None:
    ratio = value / baseline_value if baseline_value else float("nan")
    RESULTS.append(
        {
            "name": f"{name}[{loop}]",
            "value": round(value, 3),
            "unit": unit,
            "baseline": baseline,
            "baseline_value": round(baseline_value, 3),
            "ratio": round(ratio, 3),
        }
    )


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


# -- in-process restart latency ------------------------------------------------------------------------------
class Crashy:
    """A worker that answers calls and raises on "crash"; each incarnation resolves ``ready`` when it is up."""

    def __init__(self) -> None:
        self.ready: dict[str, asyncio.Future[None]] = {}

    async def run(self, ctx: Any) -> None:
        mb = ctx.mailbox
        ctx.started()
        fut = self.ready.get(ctx.path)
        if fut is not None and not fut.done():
            fut.set_result(None)
        async for msg in mb:
            if msg.payload == "crash":
                raise RuntimeError("crash")
            if isinstance(msg, Call):
                msg.reply(msg.payload)


def print_rows(rows: list[dict[str, Any]], as_json: bool, baseline: str) -> None:
    """A benchmark's rows: JSON lines, or aligned text with each ratio named against ``baseline``."""
    for r in rows:
        if as_json:
            print(json.dumps(r))
            continue
        extra = f"  ({r['ratio']:.2f}x {baseline})" if "ratio" in r else f"  ({r['note']})" if "note" in r else ""
        print(f"{r['name']:<56} {r['value']:>12} {r['unit']}{extra}")


async def crash_cycles(tree: Tree, crashy: Crashy, path: str, n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        crashy.ready[path] = ready = loop.create_future()
        t0 = time.perf_counter()
        await tree.mailbox(path).cast("crash")
        await ready
        await tree.mailbox(path).call(1)
        out.append(time.perf_counter() - t0)
    return out


async def restart_latency_supervised(n: int) -> list[float]:
    crashy = Crashy()
    tree = Tree(SupervisorSpec(id="root", flags=LOOSE, children=[WorkerSpec(id="w", run=crashy.run)]))
    await tree.start()
    out = await crash_cycles(tree, crashy, "w", n)
    await tree.stop()
    return out


async def restart_latency_bare(n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {}

    async def worker(q: asyncio.Queue[Any], ready: asyncio.Future[None]) -> None:
        ready.set_result(None)
        while True:
            payload, fut = await q.get()
            if payload == "crash":
                raise RuntimeError("crash")
            fut.set_result(payload)

    async def supervise() -> None:
        while True:
            q: asyncio.Queue[Any] = asyncio.Queue(1024)
            ready = loop.create_future()
            state["q"] = q
            task = loop.create_task(worker(q, ready))
            await ready
            if "ready" in state and not state["ready"].done():
                state["ready"].set_result(None)
            try:
                await task
            except Exception:
                pass

    state["ready"] = loop.create_future()
    sup = loop.create_task(supervise())
    await state["ready"]
    out = []
    for _ in range(n):
        state["ready"] = loop.create_future()
        t0 = time.perf_counter()
        state["q"].put_nowait(("crash", None))
        await state["ready"]
        fut = loop.create_future()
        state["q"].put_nowait((1, fut))
        await fut
        out.append(time.perf_counter() - t0)
    sup.cancel()
    return out


# -- OS-process restart latency --------------------------------------------------------------------------------
CMD = ["sleep", "1000"]


async def os_restart_supervised(n: int) -> list[float]:
    tree = Tree(SupervisorSpec(id="root", flags=LOOSE, children=[ProcessSpec(id="p", command=CMD)]))
    sub = tree.bus.subscribe()
    await tree.start()
    out = []
    for _ in range(n):
        pid = tree.child("p").pid
        assert pid is not None
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            ev = await sub.get()
            if isinstance(ev, ChildStarted):
                break
        out.append(time.perf_counter() - t0)
    await tree.stop()
    return out


async def os_restart_bare(n: int) -> list[float]:
    proc = await asyncio.create_subprocess_exec(*CMD)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc.kill()
        await proc.wait()
        proc = await asyncio.create_subprocess_exec(*CMD, start_new_session=True)
        out.append(time.perf_counter() - t0)
    proc.kill()
    await proc.wait()
    return out


# -- call round trip and cast throughput -----------------------------------------------------------------------
async def echo(ctx: Any) -> None:
    mb = ctx.mailbox
    ctx.register("echo")
    ctx.started()
    async for msg in mb:
        if isinstance(msg, Call):
            msg.reply(msg.payload)


async def call_supervised(n: int) -> float:
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="e", run=echo)]))
    await tree.start()
    t0 = time.perf_counter()
    for i in range(n):
        await tree.call("echo", i)
    dt = time.perf_counter() - t0
    await tree.stop()
    return dt / n


async def call_bare(n: int) -> float:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[Any] = asyncio.Queue(1024)

    async def server() -> None:
        while True:
            payload, fut = await q.get()
            if not fut.done():
                fut.set_result(payload)

    task = loop.create_task(server())
    t0 = time.perf_counter()
    for i in range(n):
        fut = loop.create_future()
        await q.put((i, fut))
        await fut
    dt = time.perf_counter() - t0
    task.cancel()
    return dt / n


async def cast_supervised(n: int) -> float:
    done = asyncio.get_running_loop().create_future()

    async def sink(ctx: Any) -> None:
        mb = ctx.mailbox
        ctx.register("sink")
        ctx.started()
        count = 0
        async for _ in mb:
            count += 1
            if count == n:
                done.set_result(None)

    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="s", run=sink)]))
    await tree.start()
    mb = tree.mailbox("sink")
    t0 = time.perf_counter()
    for i in range(n):
        await mb.cast(i)
    await done
    dt = time.perf_counter() - t0
    await tree.stop()
    return n / dt


async def cast_bare(n: int) -> float:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    q: asyncio.Queue[Any] = asyncio.Queue(1024)

    async def sink() -> None:
        count = 0
        while True:
            await q.get()
            count += 1
            if count == n:
                done.set_result(None)

    task = loop.create_task(sink())
    t0 = time.perf_counter()
    for i in range(n):
        await q.put(i)
    await done
    dt = time.perf_counter() - t0
    task.cancel()
    return n / dt


# -- 10,000 children ------------------------------------------------------------------------------------------
async def idle(ctx: Any) -> None:
    ctx.started()
    await asyncio.Event().wait()


async def many_supervised(n: int, measure_memory: bool) -> tuple[float, float, float]:
    spec = SupervisorSpec(id="root", children=[WorkerSpec(id=f"c{i}", run=idle) for i in range(n)])
    gc.collect()
    if measure_memory:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    tree = Tree(spec)
    t0 = time.perf_counter()
    await tree.start()
    t_start = time.perf_counter() - t0
    mem = 0.0
    if measure_memory:
        gc.collect()
        mem = (tracemalloc.get_traced_memory()[0] - base) / n
        tracemalloc.stop()
    t0 = time.perf_counter()
    await tree.stop()
    t_stop = time.perf_counter() - t0
    return t_start, t_stop, mem


async def many_bare(n: int, measure_memory: bool) -> tuple[float, float, float]:
    loop = asyncio.get_running_loop()

    async def bare_idle(ready: asyncio.Future[None]) -> None:
        ready.set_result(None)
        await asyncio.Event().wait()

    gc.collect()
    if measure_memory:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    tasks = []
    t0 = time.perf_counter()
    for _ in range(n):
        ready = loop.create_future()
        tasks.append(loop.create_task(bare_idle(ready)))
        await ready
    t_start = time.perf_counter() - t0
    mem = 0.0
    if measure_memory:
        gc.collect()
        mem = (tracemalloc.get_traced_memory()[0] - base) / n
        tracemalloc.stop()
    t0 = time.perf_counter()
    for t in reversed(tasks):
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            pass
    t_stop = time.perf_counter() - t0
    return t_start, t_stop, mem


# -- event hot path --------------------------------------------------------------------------------------------
async def emit_cost(n: int, with_sink: bool) -> float:
    """ns per event on the emitting side, as the core emits (build the event only when someone listens)."""
    from mcp_supervisor.core import ChildStarted
    from mcp_supervisor.telemetry.sink import factory as sink_factory

    children = [WorkerSpec(id="telemetry", run=sink_factory({}))] if with_sink else []
    tree = Tree(SupervisorSpec(id="root", children=children))
    await tree.start()
    bus = tree.bus
    spent = 0.0
    for _ in range(n // 1000):
        t0 = time.perf_counter()
        for _ in range(1000):
            if bus.active:
                bus.emit(ChildStarted(path="a/b", kind="worker", pid=None, restarts=1))
        spent += time.perf_counter() - t0
        await asyncio.sleep(0)  # let the sink consume between batches
    await tree.stop()
    return spent / n * 1e9


async def flood_call_latency(events: int, flood: bool) -> list[float]:
    """Call round trips to a worker while ``events`` are emitted in batches of 5,000 (the telemetry sink attached)."""
    from mcp_supervisor.services.events import ServiceOperation
    from mcp_supervisor.telemetry.sink import factory as sink_factory

    tree = Tree(SupervisorSpec(id="root", children=[
        WorkerSpec(id="echo", run=echo), WorkerSpec(id="telemetry", run=sink_factory({"queue": 1000})),
    ]))  # fmt: skip
    await tree.start()
    latencies: list[float] = []
    done = asyncio.Event()

    async def flooder() -> None:
        ev = ServiceOperation(path="cache", service="cache", operation="get", result="hit", duration_s=0.0001)
        for _ in range(events // 5000):
            if flood:
                for _ in range(5000):
                    tree.bus.emit(ev)
            await asyncio.sleep(0)
        done.set()

    async def caller() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await tree.call("echo", 1)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(flooder(), caller())
    await tree.stop()
    return latencies


# -- driver ---------------------------------------------------------------------------------------------------
def run(loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def bench_loop(name: str, factory: Callable[[], asyncio.AbstractEventLoop] | None, quick: bool, smoke: bool) -> None:
    n_restart = 100 if smoke else 2_000 if quick else 10_000
    n_os = 3 if smoke else 30 if quick else 100
    n_call = 500 if smoke else 20_000 if quick else 100_000
    n_cast = 1_000 if smoke else 50_000 if quick else 300_000
    n_many = 200 if smoke else 10_000

    run(factory, restart_latency_bare(500))  # warm-up
    sup = run(factory, restart_latency_supervised(n_restart))
    bare = run(factory, restart_latency_bare(n_restart))
    us = 1e6
    record(
        "inproc_restart_latency_median",
        statistics.median(sup) * us,
        "us",
        "bare asyncio task re-creation loop",
        statistics.median(bare) * us,
        name,
    )
    record(
        "inproc_restart_latency_p99",
        pct(sup, 0.99) * us,
        "us",
        "bare asyncio task re-creation loop",
        pct(bare, 0.99) * us,
        name,
    )

    sup = run(factory, os_restart_supervised(n_os))
    bare = run(factory, os_restart_bare(n_os))
    record(
        "os_restart_latency_median",
        statistics.median(sup) * 1e3,
        "ms",
        "bare spawn of the same command",
        statistics.median(bare) * 1e3,
        name,
    )

    sup_call = run(factory, call_supervised(n_call))
    bare_call = run(factory, call_bare(n_call))
    record("call_round_trip", sup_call * us, "us", "asyncio.Queue + Future", bare_call * us, name)

    sup_cast = run(factory, cast_supervised(n_cast))
    bare_cast = run(factory, cast_bare(n_cast))
    record("cast_throughput", sup_cast, "msg/s", "bounded asyncio.Queue", bare_cast, name)

    s_start, s_stop, _ = run(factory, many_supervised(n_many, False))
    b_start, b_stop, _ = run(factory, many_bare(n_many, False))
    record("start_10k_children", s_start * 1e3, "ms", "10,000 bare tasks started one by one", b_start * 1e3, name)
    record("stop_10k_children", s_stop * 1e3, "ms", "10,000 bare tasks cancelled in reverse", b_stop * 1e3, name)
    _, _, s_mem = run(factory, many_supervised(n_many, True))
    _, _, b_mem = run(factory, many_bare(n_many, True))
    record("memory_per_idle_child", s_mem, "bytes", "bare idle task", b_mem, name)
    RESULTS[-1]["extra_per_child_bytes"] = round(s_mem - b_mem, 1)

    n_events = 10_000 if smoke else 200_000 if quick else 1_000_000
    with_sink = run(factory, emit_cost(n_events, True))
    without = run(factory, emit_cost(n_events, False))
    record("event_emit_cost_with_sink", with_sink, "ns", "no subscriber", without, name)

    flooded = run(factory, flood_call_latency(n_events, True))
    calm = run(factory, flood_call_latency(n_events, False))
    record("flood_call_latency_median", statistics.median(flooded) * us, "us", "the same calls, no flood",
           statistics.median(calm) * us, name)  # fmt: skip
    record("flood_call_latency_p99", pct(flooded, 0.99) * us, "us", "the same calls, no flood", pct(calm, 0.99) * us,
           name)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--smoke", action="store_true", help="a few iterations: the script runs, measures nothing")
    args = parser.parse_args()
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]] = [("asyncio", None)]
    try:
        import uvloop

        loops.append(("uvloop", uvloop.new_event_loop))
    except ImportError:
        print("uvloop not installed: measuring the default loop only", file=sys.stderr)
    for name, factory in loops:
        bench_loop(name, factory, args.quick, args.smoke)
    if args.json:
        for r in RESULTS:
            print(json.dumps(r))
        return
    print(f"{'benchmark':<42} {'value':>12} {'unit':<6} {'baseline':>12} {'ratio':>7}  baseline")
    for r in RESULTS:
        print(
            f"{r['name']:<42} {r['value']:>12.2f} {r['unit']:<6} {r['baseline_value']:>12.2f} {r['ratio']:>7.2f}"
            f"  {r['baseline']}"
        )


if __name__ == "__main__":
    main()
