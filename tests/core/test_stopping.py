"""A request to a supervisor that is stopping, or has stopped, fails at once (OTP answers ``noproc``): it never hangs.

Supervisors stop three ways — their parent terminates them, they give up (intensity), the whole tree stops — and
requests reach them three ways — by path, on a ``Supervisor`` object fetched earlier, already queued in its inbox.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from mcp_supervisor.core import (
    NotRunning,
    Restart,
    SupervisorError,
    SupervisorFlags,
    SupervisorSpec,
    Tree,
    WorkerSpec,
)
from mcp_supervisor.testing import Scripted

DEADLINE = 10.0  # generous: an answer comes at once; only a hang reaches this


async def slow_cleanup(ctx: Any) -> None:
    """A worker whose stop takes a few loop turns: the window in which its supervisor is stopping."""
    ctx.started()
    try:
        await asyncio.Event().wait()
    finally:
        for _ in range(5):
            await asyncio.shield(asyncio.sleep(0))


def build(n_subs: int = 4, workers: int = 3) -> tuple[Tree, dict[str, Scripted]]:
    crashers: dict[str, Scripted] = {}
    subs = []
    for i in range(n_subs):
        kids: list[Any] = [WorkerSpec(id=f"w{j}", run=slow_cleanup) for j in range(workers)]
        crashers[f"s{i}"] = Scripted()
        kids.append(WorkerSpec(id="crasher", run=crashers[f"s{i}"].run))
        subs.append(
            SupervisorSpec(
                id=f"s{i}", children=kids, flags=SupervisorFlags(intensity=0, period=60), restart=Restart.TEMPORARY
            )
        )
    return Tree(SupervisorSpec(id="root", children=subs, flags=SupervisorFlags(intensity=100))), crashers


def operations(tree: Tree, path: str, sup: Any, rng: random.Random) -> list[Any]:
    """Every runtime operation, addressed by path and on a possibly stale Supervisor object."""
    n = rng.randrange(1000)
    return [
        tree.terminate_child(f"{path}/w0"),
        tree.restart_child(f"{path}/w1"),
        tree.delete_child(f"{path}/w2"),
        tree.start_child(path, WorkerSpec(id=f"extra{n}", run=slow_cleanup)),
        sup.sync(),
        sup.terminate_child("w1"),
        sup.start_child(WorkerSpec(id=f"late{n}", run=slow_cleanup)),
        asyncio.sleep(0, sup.which_children),
    ]


async def settle(coro: Any) -> str:
    """Run one operation to its answer; a SupervisorError is an answer, a hang is a failure."""
    try:
        result = await asyncio.wait_for(coro, DEADLINE)
        if callable(result):  # which_children / count_children / get_childspec read at this moment
            result()
    except SupervisorError as e:
        return type(e).__name__
    except TimeoutError:
        pytest.fail(f"an operation hung for {DEADLINE}s")
    return "ok"


async def test_operations_fired_at_stopping_supervisors_all_answer() -> None:
    answers: list[str] = []
    for seed in range(20):
        answers += await one_run(random.Random(seed))
    assert "NotRunning" in answers  # the race was real: requests met stopping supervisors
    assert "ok" in answers


async def one_run(rng: random.Random) -> list[str]:
    tree, crashers = build()
    await tree.start()
    stale = {f"s{i}": tree.supervisor(f"s{i}") for i in range(4)}
    answers: list[str] = []
    for round_ in range(4):
        path = f"s{round_}"
        sup = stale[path]
        ops = operations(tree, path, sup, rng)
        rng.shuffle(ops)
        how = rng.choice(["parent terminates it", "it gives up", "the tree stops"])
        if how == "parent terminates it":
            stopper: Any = tree.terminate_child(path)
        elif how == "it gives up":  # intensity 0: the crasher's first exit makes the supervisor give up
            crashers[path].end("crash")
            stopper = asyncio.sleep(0)
        else:
            stopper = tree.stop()
        # the operations race the stop: some are queued before it, some arrive during it, some after
        tasks = [asyncio.ensure_future(settle(op)) for op in ops[: len(ops) // 2]]
        tasks.append(asyncio.ensure_future(settle(stopper)))
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
        tasks += [asyncio.ensure_future(settle(op)) for op in ops[len(ops) // 2 :]]
        answers += await asyncio.gather(*tasks)
        # once stopped, every request on the stale object fails at once with NotRunning
        for late in (sup.sync(), sup.terminate_child("w0"), sup.start_child(WorkerSpec(id="z", run=slow_cleanup))):
            with pytest.raises(NotRunning):
                await asyncio.wait_for(late, DEADLINE)
        with pytest.raises(NotRunning):
            sup.which_children()
        if how == "the tree stops":
            break
    await tree.stop()
    return answers


async def test_a_request_queued_behind_a_slow_operation_fails_when_the_supervisor_is_terminated() -> None:
    release = asyncio.Event()

    async def slow_start(ctx: Any) -> None:
        await release.wait()
        ctx.started()
        await asyncio.Event().wait()

    inner = SupervisorSpec(id="inner", children=[WorkerSpec(id="a", run=slow_cleanup)])
    tree = Tree(SupervisorSpec(id="root", children=[inner]))
    async with tree:
        sup = tree.supervisor("inner")
        busy = asyncio.ensure_future(sup.start_child(WorkerSpec(id="slow", run=slow_start)))
        await asyncio.sleep(0)
        queued = asyncio.ensure_future(sup.sync())  # waits behind the slow start
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(tree.terminate_child("inner"))
        with pytest.raises(NotRunning):
            await asyncio.wait_for(queued, DEADLINE)  # fails at once, not after the children stopped
        with pytest.raises(NotRunning):
            await asyncio.wait_for(busy, DEADLINE)
        await asyncio.wait_for(stopping, DEADLINE)
        release.set()
