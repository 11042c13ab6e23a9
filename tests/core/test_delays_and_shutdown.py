"""Restart delays, start timeouts and shutdown timeouts, driven by a ManualClock (no sleeping)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from mcp_supervisor.core import (
    Backoff,
    ChildStarted,
    ChildUnstopped,
    FailedToStartChild,
    ManualClock,
    RestartScheduled,
    ShutdownTimeout,
    State,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    Tree,
    WorkerSpec,
)
from mcp_supervisor.testing import Recorder, Scripted, until


def delayed_tree(
    backoff: Backoff, *, intensity: int = 10, strategy: str = "one_for_one"
) -> tuple[Tree, Scripted, Scripted, ManualClock, Recorder]:
    clock = ManualClock()
    a, b = Scripted(), Scripted()
    spec = SupervisorSpec(
        id="root",
        flags=SupervisorFlags(intensity=intensity, period=60, strategy=Strategy(strategy)),
        children=[WorkerSpec(id="a", run=a.run, backoff=backoff), WorkerSpec(id="b", run=b.run)],
    )
    tree = Tree(spec, clock=clock)
    return tree, a, b, clock, Recorder(tree.bus)


async def test_delayed_restart_shows_restarting_with_the_next_attempt_and_never_blocks() -> None:
    tree, a, _, clock, rec = delayed_tree(Backoff(initial=2, max=16, jitter=0))
    async with tree:
        a.end("crash")
        sched = await rec.wait(lambda e: isinstance(e, RestartScheduled))
        assert sched.delay_s == 2
        await tree.supervisor().sync()
        node = tree.status().as_dict()["children"][0]
        assert node["state"] == "restarting"
        assert node["next_restart_at"] == pytest.approx(sched.at + 2, abs=0.5)
        # the supervisor answers runtime operations while the delay runs
        extra = Scripted()
        assert await tree.start_child("", WorkerSpec(id="x", run=extra.run)) == "x"
        assert dataclasses.asdict(tree.count_children()) == {"specs": 3, "active": 2, "supervisors": 0, "workers": 3}
        clock.advance(1.999)
        await tree.supervisor().sync()
        assert tree.child("a").state is State.RESTARTING
        clock.advance(0.001)
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.path == "a" and e.restarts == 1)
        assert len(tree.root.restart_attempts) == 1  # the delayed restart counted once


async def test_delays_grow_exponentially_up_to_the_cap_and_reset_after_stable_uptime() -> None:
    tree, a, _, clock, rec = delayed_tree(Backoff(initial=1, max=4, jitter=0, reset_after=10))
    async with tree:
        delays = []
        for n in range(4):
            a.end("crash")
            ev = await rec.wait_for(RestartScheduled, attempt=n + 1)
            delays.append(ev.delay_s)
            clock.advance(ev.delay_s)
            await rec.wait_for(ChildStarted, path="a", restarts=n + 1)
        assert delays == [1, 2, 4, 4]
        clock.advance(10)  # stayed up for reset_after
        a.end("crash")
        await until(lambda: len(rec.of(RestartScheduled)) == 5)
        assert rec.of(RestartScheduled)[-1].delay_s == 1


async def test_a_failed_delayed_restart_is_retried_later_and_each_attempt_counts_once() -> None:
    tree, a, _, clock, rec = delayed_tree(Backoff(initial=1, max=8, jitter=0))
    async with tree:
        a.fail_starts = 2
        a.end("crash")
        await rec.wait(lambda e: isinstance(e, RestartScheduled) and e.delay_s == 1)
        clock.advance(1)  # attempt 1 fails -> next in 2 s
        await rec.wait(lambda e: isinstance(e, RestartScheduled) and e.delay_s == 2)
        assert len(tree.root.restart_attempts) == 2 and tree.child("a").state is State.RESTARTING
        clock.advance(2)  # attempt 2 fails -> next in 4 s
        await rec.wait(lambda e: isinstance(e, RestartScheduled) and e.delay_s == 4)
        clock.advance(4)
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.path == "a" and e.restarts == 1)
        assert len(tree.root.restart_attempts) == 3
        assert a.incarnations == 4


async def test_terminating_a_child_waiting_for_its_delay_cancels_the_restart() -> None:
    tree, a, _, clock, rec = delayed_tree(Backoff(initial=5, max=5, jitter=0))
    async with tree:
        a.end("crash")
        await rec.wait(lambda e: isinstance(e, RestartScheduled))
        await tree.terminate_child("a")
        clock.advance(10)
        await tree.supervisor().sync()
        assert tree.child("a").state is State.STOPPED
        assert a.incarnations == 1


async def test_group_restart_waits_for_the_failed_childs_delay() -> None:
    tree, a, b, clock, rec = delayed_tree(Backoff(initial=3, max=3, jitter=0), strategy=Strategy.ONE_FOR_ALL)
    async with tree:
        a.end("crash")
        await rec.wait(lambda e: isinstance(e, RestartScheduled))
        await tree.supervisor().sync()
        assert [c["state"] for c in tree.status().as_dict()["children"]] == ["restarting", "restarting"]
        clock.advance(3)
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.path == "b" and e.restarts == 1)
        assert a.incarnations == 2 and b.incarnations == 2


async def test_start_timeout_is_a_start_failure() -> None:
    clock = ManualClock()
    never = Scripted(ready=False)
    tree = Tree(
        SupervisorSpec(id="root", children=[WorkerSpec(id="slow", run=never.run, start_timeout=3)]), clock=clock
    )
    starting = asyncio.ensure_future(tree.start())
    await until(lambda: never.incarnations == 1 and clock.pending)
    clock.advance(3)
    with pytest.raises(FailedToStartChild, match="not ready within its start timeout of 3s"):
        await starting


async def test_in_process_child_that_overruns_its_shutdown_is_reported_not_claimed_killed() -> None:
    clock = ManualClock()
    stuck, ok = Scripted(), Scripted()
    stuck.release_cleanup = asyncio.Event()
    tree = Tree(
        SupervisorSpec(
            id="root",
            children=[WorkerSpec(id="ok", run=ok.run), WorkerSpec(id="stuck", run=stuck.run, shutdown=2)],
        ),
        clock=clock,
    )
    rec = Recorder(tree.bus)
    await tree.start()
    stopping = asyncio.ensure_future(tree.stop())
    await until(lambda: ("stop", "stuck") in stuck.log and clock.pending)
    assert ("stop", "ok") not in ok.log  # reverse order: ok waits until stuck is done or given up
    clock.advance(2)
    report = await stopping
    assert report.unstopped == ("stuck",)
    assert rec.of(ShutdownTimeout, "stuck")[0].timeout_s == 2
    assert rec.of(ChildUnstopped, "stuck")
    assert ("stop", "ok") in ok.log
    stuck.release_cleanup.set()


async def test_an_operator_restart_of_a_worker_that_overruns_its_shutdown_starts_a_new_incarnation() -> None:
    """OTP would kill the old one; Python cannot, so it is reported and detached, and the new one starts anyway."""
    clock = ManualClock()
    stuck = Scripted()
    stuck.release_cleanup = asyncio.Event()
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="s", run=stuck.run, shutdown=2)]), clock=clock)
    rec = Recorder(tree.bus)
    async with tree:
        restarting = asyncio.ensure_future(tree.restart("s"))
        await until(lambda: ("stop", "s") in stuck.log and clock.pending)
        clock.advance(2)
        await restarting
        assert rec.of(ChildUnstopped, "s")
        assert stuck.incarnations == 2
        assert tree.child("s").state is State.RUNNING
        stuck.release_cleanup.set()
        await tree.restart("s")  # the detached old incarnation does not block later restarts either
        assert stuck.incarnations == 3


async def test_brutal_kill_does_not_wait_for_cleanup() -> None:
    stuck = Scripted()
    stuck.release_cleanup = asyncio.Event()
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="s", run=stuck.run, shutdown="brutal_kill")]))
    await tree.start()
    report = await tree.stop()
    assert report.unstopped == ("s",)
    stuck.release_cleanup.set()


async def test_infinity_waits_for_the_cleanup() -> None:
    clock = ManualClock()
    slow = Scripted()
    slow.release_cleanup = asyncio.Event()
    tree = Tree(
        SupervisorSpec(id="root", children=[WorkerSpec(id="s", run=slow.run, shutdown="infinity")]), clock=clock
    )
    await tree.start()
    stopping = asyncio.ensure_future(tree.stop())
    await until(lambda: ("stop", "s") in slow.log)
    clock.advance(3600)
    await asyncio.sleep(0)
    assert not stopping.done()
    slow.release_cleanup.set()
    assert (await stopping).clean


async def test_dynamic_children_stop_all_at_once_with_one_timer() -> None:
    n = 5
    began: list[str] = []
    all_began = asyncio.Event()

    async def worker(ctx: Any) -> None:
        ctx.started(ctx.args)
        try:
            await asyncio.Event().wait()
        finally:
            began.append(ctx.id)
            if len(began) == n:
                all_began.set()
            await asyncio.shield(all_began.wait())  # finishes only if all were asked at once

    clock = ManualClock()
    spec = SupervisorSpec(
        id="root",
        flags=SupervisorFlags(strategy=Strategy.SIMPLE_ONE_FOR_ONE),
        children=[WorkerSpec(id="job", run=worker, shutdown=1)],
    )
    tree = Tree(spec, clock=clock)
    await tree.start()
    paths = [await tree.start_child("", [i]) for i in range(n)]
    assert paths == [f"job-{i + 1}" for i in range(n)]
    assert await tree.handle("job-3") == (2,)
    report = await tree.stop()
    assert report.clean and len(began) == n


async def test_deadline_cancels_only_itself() -> None:
    from mcp_supervisor.core.clock import Deadline, Sweeper

    async def guarded(seconds: float, block: asyncio.Event) -> str:
        dl = Deadline()
        dl.arm(seconds)
        try:
            await block.wait()
            return "done"
        except asyncio.CancelledError:
            if dl.expired_here():
                return "timed out"
            raise
        finally:
            dl.disarm()

    assert await guarded(0.01, asyncio.Event()) == "timed out"
    ready = asyncio.Event()
    ready.set()
    assert await guarded(5, ready) == "done"
    task = asyncio.ensure_future(guarded(5, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()  # an outside cancellation is never absorbed
    with pytest.raises(asyncio.CancelledError):
        await task
    assert Sweeper.of(asyncio.get_running_loop()).active == {}  # nothing left watched


@pytest.mark.parametrize(("retries", "fails", "started"), [(2, 2, True), (1, 2, False), (0, 1, False)])
async def test_start_retries_try_a_failed_first_start_again_after_the_backoff(
    retries: int, fails: int, started: bool
) -> None:
    """supervisord's startretries, opt-in: the first start is tried again with the child's backoff delays; 0 keeps
    OTP's rule (a failed first start fails the supervisor's start)."""
    clock = ManualClock()
    flaky = Scripted(fail_starts=fails)
    spec = SupervisorSpec(id="root", children=[
        WorkerSpec(id="w", run=flaky.run, start_retries=retries, backoff=Backoff(initial=2, max=8, jitter=0)),
    ])  # fmt: skip
    tree = Tree(spec, clock=clock)
    rec = Recorder(tree.bus)
    starting = asyncio.ensure_future(tree.start())
    for attempt in range(min(fails, retries)):

        def scheduled(a: int = attempt) -> bool:
            return len(rec.of(RestartScheduled, "w")) == a + 1 and bool(clock.pending)

        await until(scheduled)
        assert rec.of(RestartScheduled, "w")[-1].delay_s == 2 * 2**attempt
        assert not starting.done()
        clock.advance(2 * 2**attempt)
    if started:
        await starting
        assert tree.child("w").state is State.RUNNING and flaky.incarnations == fails + 1
        await tree.stop()
    else:
        with pytest.raises(FailedToStartChild, match="boom during start"):
            await starting
        assert flaky.incarnations == retries + 1
