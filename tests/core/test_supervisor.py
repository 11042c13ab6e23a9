"""Every row of docs/semantics.md for in-process workers: strategies, restart types, intensity, order, escalation."""

from __future__ import annotations

import asyncio
import dataclasses
from functools import partial
from typing import Any

import pytest

from mcp_supervisor.core import (
    AutoShutdown,
    ChildExited,
    ChildStarted,
    FailedToStartChild,
    IntensityExceeded,
    ManualClock,
    Restart,
    StartFailed,
    State,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    SupervisorStopped,
    Tree,
    WorkerSpec,
)
from mcp_supervisor.testing import Recorder, Scripted, until


def build(
    n: int = 3,
    strategy: str = "one_for_one",
    *,
    intensity: int = 3,
    period: float = 5,
    restart: str = "permanent",
    clock: ManualClock | None = None,
) -> tuple[Tree, dict[str, Scripted], list[tuple[str, str]], Recorder]:
    log: list[tuple[str, str]] = []
    workers = {name: Scripted(log) for name in "abcdefgh"[:n]}
    spec = SupervisorSpec(
        id="root",
        flags=SupervisorFlags(strategy=Strategy(strategy), intensity=intensity, period=period),
        children=[WorkerSpec(id=k, run=v.run, restart=Restart(restart)) for k, v in workers.items()],
    )
    tree = Tree(spec, clock=clock)
    return tree, workers, log, Recorder(tree.bus)


async def restarted(rec: Recorder, path: str, times: int = 1) -> None:
    await rec.wait(
        lambda e: isinstance(e, ChildStarted) and e.path == path and e.restarts == times, what=f"{path} restart"
    )


async def test_start_in_order_each_after_the_previous_is_ready_and_stop_in_reverse() -> None:
    log: list[tuple[str, str]] = []
    gate = asyncio.Event()

    async def slow_ready(ctx: Any) -> None:
        log.append(("start", ctx.path))
        await gate.wait()
        ctx.started()
        try:
            await asyncio.Event().wait()
        finally:
            log.append(("stop", ctx.path))

    b = Scripted(log)
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="a", run=slow_ready), WorkerSpec(id="b", run=b.run)]))
    starting = asyncio.ensure_future(tree.start())
    await until(lambda: log == [("start", "a")], what="a starting")
    # b must not start while a is not ready, and status stays readable meanwhile
    for _ in range(20):
        await asyncio.sleep(0)
    assert log == [("start", "a")]
    assert [c["state"] for c in tree.status().as_dict()["children"]] == ["starting", "stopped"]
    gate.set()
    await starting
    assert log == [("start", "a"), ("start", "b")]
    report = await tree.stop()
    assert report.clean
    assert log[2:] == [("stop", "b"), ("stop", "a")]


async def test_one_for_one_restarts_only_the_failed_child() -> None:
    tree, w, log, rec = build()
    async with tree:
        a, c = w["a"].current, w["c"].current
        w["b"].end("crash")
        await restarted(rec, "b")
        assert w["a"].current is a and w["c"].current is c
        assert log[3:] == [("stop", "b"), ("start", "b")]
        node = tree.status().as_dict()["children"][1]
        assert node["restarts"] == 1 and node["last_exit"]["reason"] == "abnormal"
        assert "crash requested" in node["last_exit"]["detail"]


async def test_one_for_all_stops_siblings_in_reverse_then_starts_all_in_order() -> None:
    tree, w, log, rec = build(strategy=Strategy.ONE_FOR_ALL)
    async with tree:
        w["b"].end("crash")
        await restarted(rec, "c")
        assert log[3:] == [
            ("stop", "b"),
            ("stop", "c"),
            ("stop", "a"),
            ("start", "a"),
            ("start", "b"),
            ("start", "c"),
        ]


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it() -> None:
    tree, w, log, rec = build(n=4, strategy=Strategy.REST_FOR_ONE)
    async with tree:
        a = w["a"].current
        w["b"].end("crash")
        await restarted(rec, "d")
        assert w["a"].current is a
        assert log[4:] == [
            ("stop", "b"),
            ("stop", "d"),
            ("stop", "c"),
            ("start", "b"),
            ("start", "c"),
            ("start", "d"),
        ]


@pytest.mark.parametrize(
    ("restart", "how", "restarted_", "kept"),
    [
        ("permanent", "normal", True, True),
        ("permanent", "shutdown", True, True),
        ("permanent", "crash", True, True),
        ("transient", "normal", False, True),
        ("transient", "shutdown", False, True),
        ("transient", "crash", True, True),
        ("temporary", "normal", False, False),
        ("temporary", "shutdown", False, False),
        ("temporary", "crash", False, False),
    ],
)
async def test_restart_decision_by_restart_type_and_exit_reason(
    restart: str, how: str, restarted_: bool, kept: bool
) -> None:
    tree, w, _, rec = build(n=2, restart=restart)
    async with tree:
        w["a"].end(how)
        exited = await rec.wait(lambda e: isinstance(e, ChildExited) and e.path == "a")
        assert exited.reason.kind == {"crash": "abnormal"}.get(how, how)
        await tree.supervisor().sync()  # a's exit has been handled
        if restarted_:
            await restarted(rec, "a")
            assert tree.child("a").state is State.RUNNING
        else:
            ids = [c.id for c in tree.which_children()]
            assert ("a" in ids) is kept
            if kept:
                assert tree.child("a").state is State.STOPPED
            assert [e for e in rec.of(ChildStarted, "a") if e.restarts] == []


async def test_intensity_exceeded_stops_all_in_reverse_and_the_root_exits_with_shutdown() -> None:
    clock = ManualClock()
    tree, w, log, rec = build(intensity=2, period=5, clock=clock)
    await tree.start()
    for i in range(2):
        w["a"].end("crash")
        await restarted(rec, "a", i + 1)
        clock.advance(1)
    w["a"].end("crash")  # 3rd within 5 s > intensity 2
    reason = await tree.wait()
    assert reason.kind == "shutdown" and reason.detail == "reached_max_restart_intensity"
    assert rec.of(IntensityExceeded) and rec.of(SupervisorStopped)
    assert log[-3:] == [("stop", "a"), ("stop", "c"), ("stop", "b")]
    await tree.stop()


async def test_restarts_spread_beyond_the_period_never_exceed_intensity() -> None:
    clock = ManualClock()
    tree, w, _, rec = build(intensity=1, period=5, clock=clock)
    async with tree:
        for i in range(5):
            w["a"].end("crash")
            await restarted(rec, "a", i + 1)
            clock.advance(5.001)
        assert not tree.done


async def test_intensity_zero_means_never_restart() -> None:
    tree, w, _, rec = build(intensity=0)
    await tree.start()
    w["c"].end("crash")
    assert (await tree.wait()).detail == "reached_max_restart_intensity"
    assert rec.of(ChildStarted, "c")[-1].restarts == 0


async def test_every_failed_restart_attempt_counts_against_intensity() -> None:
    log: list[tuple[str, str]] = []
    a = Scripted(log)
    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="a", run=a.run)], flags=SupervisorFlags(intensity=3)))
    rec = Recorder(tree.bus)
    await tree.start()
    a.fail_starts = 100
    a.end("crash")  # count 1, then attempts fail: counts 2, 3, 4 > 3
    assert (await tree.wait()).detail == "reached_max_restart_intensity"
    assert a.incarnations == 1 + 3
    assert len(rec.of(StartFailed, "a")) == 3


async def test_a_failed_start_during_startup_stops_the_started_children_in_reverse() -> None:
    log: list[tuple[str, str]] = []
    ws = [Scripted(log), Scripted(log), Scripted(log, fail_starts=1)]
    spec = SupervisorSpec(id="root", children=[WorkerSpec(id=i, run=s.run) for i, s in zip("abc", ws, strict=True)])
    tree = Tree(spec)
    with pytest.raises(FailedToStartChild) as err:
        await tree.start()
    assert err.value.path == "c" and "boom during start" in str(err.value)
    assert log == [("start", "a"), ("start", "b"), ("start", "c"), ("stop", "b"), ("stop", "a")]


async def test_a_failed_start_in_a_group_restart_resumes_from_the_failed_child() -> None:
    tree, w, log, rec = build(strategy=Strategy.REST_FOR_ONE, intensity=10)
    async with tree:
        w["b"].fail_starts = 1
        w["a"].end("crash")
        await restarted(rec, "c")
        starts = [p for ev, p in log[3:] if ev == "start"]
        assert starts == ["a", "b", "b", "c"]  # a started once; b retried; c after b


async def test_escalation_permanent_nested_supervisor_is_restarted_transient_is_not() -> None:
    for restart, expect_restart in (("permanent", True), ("transient", False)):
        inner = Scripted()
        other = Scripted()
        sub = SupervisorSpec(
            id="sub",
            restart=Restart(restart),
            flags=SupervisorFlags(intensity=0),
            children=[WorkerSpec(id="w", run=inner.run)],
        )
        tree = Tree(SupervisorSpec(id="root", children=[sub, WorkerSpec(id="x", run=other.run)]))
        rec = Recorder(tree.bus)
        async with tree:
            first = inner.current
            inner.end("crash")
            exited = await rec.wait(lambda e: isinstance(e, ChildExited) and e.path == "sub")
            assert exited.reason.kind == "shutdown" and exited.reason.detail == "reached_max_restart_intensity"
            if expect_restart:
                await restarted(rec, "sub")
                assert inner.current is not first and tree.child("sub/w").state is State.RUNNING
                assert tree.root.restart_attempts  # counted in the parent's window
            else:
                await until(partial(lambda t: t.child("sub").state is State.STOPPED, tree))
                assert tree.child("x").state is State.RUNNING


@pytest.mark.parametrize("mode", ["any_significant", "all_significant"])
async def test_auto_shutdown_on_significant_children_exiting_by_themselves(mode: str) -> None:
    s1, s2, other = Scripted(), Scripted(), Scripted()
    spec = SupervisorSpec(
        id="root",
        flags=SupervisorFlags(auto_shutdown=AutoShutdown(mode)),
        children=[
            WorkerSpec(id="s1", run=s1.run, restart=Restart.TRANSIENT, significant=True),
            WorkerSpec(id="s2", run=s2.run, restart=Restart.TEMPORARY, significant=True),
            WorkerSpec(id="o", run=other.run),
        ],
    )
    tree = Tree(spec)
    rec = Recorder(tree.bus)
    async with tree:
        s1.end("crash")  # abnormal: a transient child is restarted, no auto_shutdown
        await restarted(rec, "s1")
        await tree.terminate_child("s1")  # an explicit terminate never triggers auto_shutdown
        await tree.restart_child("s1")
        assert not tree.done
        s1.end("normal")
        if mode == "any_significant":
            assert (await tree.wait()).detail == "auto_shutdown"
        else:
            await until(lambda: tree.child("s1").state is State.STOPPED)
            assert not tree.done
            s2.end("normal")
            assert (await tree.wait()).detail == "auto_shutdown"


async def test_group_restart_removes_temporary_children() -> None:
    a, t = Scripted(), Scripted()
    spec = SupervisorSpec(
        id="root",
        flags=SupervisorFlags(strategy=Strategy.ONE_FOR_ALL),
        children=[WorkerSpec(id="a", run=a.run), WorkerSpec(id="t", run=t.run, restart=Restart.TEMPORARY)],
    )
    tree = Tree(spec)
    rec = Recorder(tree.bus)
    async with tree:
        a.end("crash")
        await restarted(rec, "a")
        assert [c.id for c in tree.which_children()] == ["a"]
        assert t.incarnations == 1


async def test_exits_that_are_not_exceptions_are_abnormal_and_contained() -> None:
    calls = {"n": 0}

    async def bad(ctx: Any) -> None:
        calls["n"] += 1
        ctx.started()
        await asyncio.sleep(0)
        if calls["n"] == 1:
            raise SystemExit(3)
        if calls["n"] == 2:
            raise KeyboardInterrupt
        if calls["n"] == 3:
            raise ExceptionGroup("grp", [ValueError("v1"), KeyError("k2")])
        if calls["n"] == 4:
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(1)
        await asyncio.Event().wait()

    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="a", run=bad)], flags=SupervisorFlags(intensity=10)))
    rec = Recorder(tree.bus)
    async with tree:
        await restarted(rec, "a", 4)
        reasons = [e.reason for e in rec.of(ChildExited, "a")]
        assert [r.kind for r in reasons] == ["abnormal"] * 4
        assert reasons[0].detail == "SystemExit: 3"
        assert reasons[1].detail == "KeyboardInterrupt"
        assert reasons[2].detail == "ValueError: v1; KeyError: 'k2'"
        assert "cancelled by something other than its supervisor" in reasons[3].detail


@pytest.mark.parametrize(
    ("strategy", "retry"),
    [
        # OTP restarts the whole one_for_all group on the next attempt: what the failed attempt started goes first
        ("one_for_all", [("stop", "b"), ("stop", "a"), ("start", "a"), ("start", "b"), ("start", "c")]),
        # rest_for_one resumes from the child that failed
        ("rest_for_one", [("start", "c")]),
    ],
)
async def test_a_group_restart_that_fails_midway_is_retried_as_otp_does(
    strategy: str, retry: list[tuple[str, str]]
) -> None:
    tree, w, log, rec = build(strategy=strategy, intensity=10)
    async with tree:
        w["c"].fail_starts = 1
        del log[:]
        w["a"].end("crash")
        await rec.wait(lambda e: isinstance(e, StartFailed) and e.path == "c")
        await until(
            lambda: all(c["state"] == "running" for c in tree.status().as_dict()["children"]), what="all running"
        )
        # a is the first child, so rest_for_one's first attempt is the whole group too
        first = [("stop", "a"), ("stop", "c"), ("stop", "b"), ("start", "a"), ("start", "b"), ("start", "c")]
        assert log == first + retry
        assert len(tree.supervisor().restart_attempts) == 2  # the restart and its retry both count


async def test_count_children_of_simple_one_for_one_counts_its_template_as_the_one_spec() -> None:
    tpl = WorkerSpec(id="job", run=Scripted().run, restart=Restart.TEMPORARY)
    tree = Tree(SupervisorSpec(id="root", flags=SupervisorFlags(strategy=Strategy.SIMPLE_ONE_FOR_ONE), children=[tpl]))
    async with tree:
        assert dataclasses.asdict(tree.count_children()) == {"specs": 1, "active": 0, "supervisors": 0, "workers": 0}
        await tree.start_child("", [])
        await tree.start_child("", [])
        assert dataclasses.asdict(tree.count_children()) == {"specs": 1, "active": 2, "supervisors": 0, "workers": 2}
