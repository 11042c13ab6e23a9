"""Runtime operations by path, mailboxes (cast/call), the registry, and event delivery."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from mcp_supervisor.core import (
    Call,
    CalleeExited,
    CallTimeout,
    ChildStarted,
    EventBus,
    FailedToStartChild,
    Mailbox,
    MailboxFull,
    NoSuchPath,
    NotRunning,
    OperationError,
    State,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    Tree,
    WorkerSpec,
)
from mcp_supervisor.core.events import ChildExited
from mcp_supervisor.testing import Recorder, Scripted


def nested() -> tuple[Tree, dict[str, Scripted]]:
    w = {k: Scripted() for k in ("a", "x", "y")}
    spec = SupervisorSpec(
        id="root",
        children=[
            WorkerSpec(id="a", run=w["a"].run),
            SupervisorSpec(
                id="edge",
                flags=SupervisorFlags(strategy=Strategy.REST_FOR_ONE),
                children=[WorkerSpec(id="x", run=w["x"].run), WorkerSpec(id="y", run=w["y"].run)],
            ),
        ],
    )
    return Tree(spec), w


async def test_runtime_operations_on_a_nested_supervisor_by_path() -> None:
    tree, w = nested()
    async with tree:
        assert [c.path for c in tree.which_children("edge")] == ["edge/x", "edge/y"]
        assert dataclasses.asdict(tree.count_children()) == {"specs": 2, "active": 2, "supervisors": 1, "workers": 1}
        assert tree.get_childspec("edge/y").id == "y"

        z = Scripted()
        assert await tree.start_child("edge", WorkerSpec(id="z", run=z.run)) == "edge/z"
        with pytest.raises(OperationError, match="already present"):
            await tree.start_child("edge", WorkerSpec(id="z", run=z.run))

        await tree.terminate_child("edge/y")
        assert tree.child("edge/y").state is State.STOPPED
        assert ("stop", "edge/y") in w["y"].log
        with pytest.raises(OperationError, match="terminate it before deleting"):
            await tree.delete_child("edge/x")
        with pytest.raises(OperationError, match="terminate it first"):
            await tree.restart_child("edge/x")

        await tree.restart_child("edge/y")
        assert tree.child("edge/y").state is State.RUNNING and w["y"].incarnations == 2

        await tree.terminate_child("edge/z")
        await tree.delete_child("edge/z")
        assert [c.id for c in tree.which_children("edge")] == ["x", "y"]

        with pytest.raises(NoSuchPath, match="'edge/nope'"):
            await tree.terminate_child("edge/nope")
        with pytest.raises(NoSuchPath):
            tree.which_children("nope")
        with pytest.raises(NoSuchPath):
            tree.which_children("a")  # a worker is not a supervisor


async def test_a_terminated_child_is_not_restarted_and_its_exit_is_not_a_failure() -> None:
    tree, _w = nested()
    rec = Recorder(tree.bus)
    async with tree:
        await tree.terminate_child("a")
        await tree.supervisor().sync()
        assert tree.root.restart_attempts == ()
        assert [e for e in rec.of(ChildStarted, "a")] and all(e.restarts == 0 for e in rec.of(ChildStarted, "a"))
        assert tree.status().as_dict()["children"][0]["last_exit"]["reason"] == "shutdown"


async def test_start_child_failure_is_reported_and_the_supervisor_keeps_running() -> None:
    tree, _ = nested()
    async with tree:
        bad = Scripted(fail_starts=1)
        with pytest.raises(FailedToStartChild, match="edge/bad"):
            await tree.start_child("edge", WorkerSpec(id="bad", run=bad.run))
        # as OTP: the spec of a child whose start_child failed is discarded, and start_child may be retried
        assert [c.id for c in tree.which_children("edge")] == ["x", "y"]
        with pytest.raises(NoSuchPath):
            await tree.restart_child("edge/bad")
        assert await tree.start_child("edge", WorkerSpec(id="bad", run=bad.run)) == "edge/bad"
        assert tree.child("edge/bad").state is State.RUNNING
        assert tree.child("edge/x").state is State.RUNNING


async def test_status_document_has_the_documented_fields() -> None:
    tree, _w = nested()
    async with tree:
        doc = tree.status().as_dict()
        assert doc["kind"] == "supervisor" and doc["state"] == "running" and doc["strategy"] == "one_for_one"
        a, edge = doc["children"]
        assert set(a) == {"id", "path", "kind", "state", "restarts", "uptime_s", "last_exit", "exits", "crash_loop"}
        assert edge["strategy"] == "rest_for_one" and [c["path"] for c in edge["children"]] == ["edge/x", "edge/y"]


async def test_call_cast_and_registry_follow_restarts() -> None:
    seen: list[Any] = []

    async def echo(ctx: Any) -> None:
        ctx.register("echo")
        mb = ctx.mailbox
        ctx.started()
        async for msg in mb:
            if hasattr(msg, "reply"):
                if msg.payload == "crash":
                    raise RuntimeError("asked to crash")
                if msg.payload != "ignore":
                    msg.reply(msg.payload * 2)
            else:
                seen.append(msg.payload)

    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="e", run=echo)]))
    rec = Recorder(tree.bus)
    async with tree:
        assert await tree.call("echo", 21) == 42
        assert await tree.call("e", 2) == 4  # by path too
        await tree.cast("echo", "hello")
        assert await tree.call("echo", 1) == 2  # FIFO: the cast was handled before
        assert seen == ["hello"]
        with pytest.raises(CallTimeout):
            await tree.call("echo", "ignore", timeout=0.05)

        # the callee crashes while another call is pending: that caller fails at once, not at its timeout
        pending = asyncio.ensure_future(tree.call("echo", "ignore", timeout=30))
        await asyncio.sleep(0)
        t0 = time.monotonic()
        with pytest.raises(CalleeExited):
            await tree.call("echo", "crash", timeout=30)
        with pytest.raises(CalleeExited):
            await pending
        assert time.monotonic() - t0 < 5
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert await tree.call("echo", 5) == 10  # the new incarnation registered the name again
    with pytest.raises(NotRunning):
        await tree.call("echo", 1)


async def test_late_replies_are_dropped() -> None:
    mb = Mailbox("t")
    with pytest.raises(CallTimeout):
        await mb.call("x", timeout=0.01)
    msg = await mb.receive()
    assert isinstance(msg, Call)
    msg.reply("too late")  # no error, nobody receives it
    assert msg.answered


async def test_mailboxes_are_bounded() -> None:
    mb = Mailbox("t", capacity=2)
    mb.cast_nowait(1)
    await mb.cast(2)
    with pytest.raises(MailboxFull):
        mb.cast_nowait(3)
    blocked = asyncio.ensure_future(mb.cast(3))
    await asyncio.sleep(0)
    assert not blocked.done() and mb.statistics().waiting_senders == 1
    assert (await mb.receive()).payload == 1
    await blocked
    assert [(await mb.receive()).payload for _ in range(2)] == [2, 3]
    mb.close("test")
    with pytest.raises(CalleeExited):
        await mb.cast(4)


async def test_a_slow_subscriber_never_blocks_the_tree_and_its_drops_are_counted() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxlen=2)
    a = Scripted()
    tree = Tree(
        SupervisorSpec(id="root", children=[WorkerSpec(id="a", run=a.run)], flags=SupervisorFlags(intensity=100)),
        bus=bus,
    )
    fast = Recorder(bus)
    async with tree:
        for i in range(10):
            a.end("crash")
            await fast.wait_for(ChildStarted, restarts=i + 1)
        assert len(slow) == 2 and slow.dropped > 10
        assert len(fast.of(ChildExited)) == 10
