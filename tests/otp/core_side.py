"""Run differential scenarios on mcp-supervisor's core and print the same trace as ``otp_diff.erl``.

Trace lines, per step: ``R <result>``, ``E start|stop|start_failed <path>`` in order, then ``T <supervisor>
[<child>=<state>,...]`` for every live supervisor (depth first, children in start order; simple_one_for_one
supervisors list their running children by name, sorted, and how many are restarting), or ``D`` when the root is
gone. ``S <n>`` opens a scenario; the stop events of its final shutdown close it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from tests.otp.scenarios import Atom

from mcp_supervisor.core import (
    INFINITY,
    FailedToStartChild,
    NoSuchPath,
    NotRunning,
    OperationError,
    Shutdown,
    State,
    Supervisor,
    SupervisorFlags,
    SupervisorSpec,
    Tree,
    WorkerSpec,
)
from mcp_supervisor.core.child import Child

_STATE = {State.RUNNING: "running", State.STOPPED: "undefined", State.RESTARTING: "restarting"}


class Harness:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.log: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}
        self.live: dict[str, asyncio.Future[str]] = {}

    # -- workers --------------------------------------------------------------------------------------------
    def worker(self, path_of: Any) -> Any:
        async def run(ctx: Any) -> None:
            path = path_of(ctx)
            if self.fail.get(path, 0) > 0:
                self.fail[path] -= 1
                self.log.append(("start_failed", path))
                raise RuntimeError("boom")
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self.live[path] = fut
            self.log.append(("start", path))
            ctx.started()
            try:
                how = await fut
            finally:
                if self.live.get(path) is fut:
                    del self.live[path]
                self.log.append(("stop", path))
            end_as(how)

        return run

    def build(self, node: dict[str, Any], path: str = "") -> Any:
        if node["kind"] == "worker":
            return WorkerSpec(id=node["id"], run=self.worker(lambda ctx: ctx.path), restart=node["restart"],
                              significant=node["significant"], shutdown=5)  # fmt: skip
        f = node["flags"]
        flags = SupervisorFlags(strategy=f["strategy"], intensity=f["intensity"], period=f["period"],
                                auto_shutdown=f["auto_shutdown"])  # fmt: skip
        if f["strategy"] == "simple_one_for_one":
            tpl = node["children"][0]
            children: list[Any] = [
                WorkerSpec(id=tpl["id"], run=self.worker(lambda ctx, p=path: _join(p, ctx.args[0])),
                           restart=tpl["restart"], significant=tpl["significant"], shutdown=5)
            ]  # fmt: skip
        else:
            children = [self.build(c, _join(path, c["id"])) for c in node["children"]]
        return SupervisorSpec(id=node["id"], children=children, flags=flags, restart=node["restart"],
                              significant=node["significant"], shutdown=INFINITY)  # fmt: skip

    # -- the trace ----------------------------------------------------------------------------------------------
    def events(self) -> None:
        self.out += [f"E {kind} {path}" for kind, path in self.log]
        self.log.clear()

    def snapshot(self, tree: Tree, inside: Mapping[str, list[str]] | None = None) -> list[str]:
        """``inside``: the lines of isolated subtrees, by their supervisor's path (an OS child here)."""
        if tree.done or not tree.root.running:  # OTP's which_children cannot reach a stopping supervisor either
            return ["D"]
        lines: list[str] = []

        def walk(sup: Supervisor, path: str) -> None:
            if not sup.running:
                return
            if sup.flags.strategy == "simple_one_for_one":
                names = sorted(args_of(c)[0] for c in sup.children if c.state is State.RUNNING)
                restarting = sum(1 for c in sup.children if c.state is State.RESTARTING)
                entries = [f"{n}=running" for n in names] + [f"#restarting={restarting}"] if sup.children else []
            else:
                entries = [f"{c.id}={_STATE.get(c.state, str(c.state))}" for c in sup.children]
            lines.append(f"T {path or '/'} [{','.join(entries)}]")
            for c in sup.children:
                if inside is not None and c.path in inside and c.state is State.RUNNING:
                    lines.extend(inside[c.path])
                elif c.state is State.RUNNING and isinstance(c.handle, Supervisor):
                    walk(c.handle, c.path)

        walk(tree.root, "")
        return lines

    async def settle(self, tree: Tree) -> None:
        last: list[str] = []
        same = 0
        for _ in range(10_000):
            if not tree.done:
                for sup in _supervisors(tree.root):
                    try:
                        await sup.sync()
                    except (NotRunning, NoSuchPath):
                        pass
            await asyncio.sleep(0)
            snap = self.snapshot(tree)
            busy = not tree.done and (
                not tree.root.running
                or any(
                    c.state not in (State.RUNNING, State.STOPPED)
                    or (isinstance(c.handle, Supervisor) and c.state is State.RUNNING and not c.handle.running)
                    for sup in _supervisors(tree.root)
                    for c in sup.children
                )
            )
            if snap == last and not busy:
                same += 1
                if same >= 2:
                    return
            else:
                same = 0
            last = snap
        raise AssertionError("the core did not settle")

    async def step(self, tree: Tree, result: str) -> None:
        await self.settle(tree)
        self.out.append(f"R {result}")
        self.events()
        self.out += self.snapshot(tree)

    # -- actions ----------------------------------------------------------------------------------------------
    async def act(self, tree: Tree, action: tuple[Any, ...]) -> str:
        kind, *args = action
        args = [a.name if isinstance(a, Atom) else a for a in args]
        if kind == "fail_starts":
            self.fail[args[0]] = args[1]
            return "ok"
        if kind == "crash":
            fut = self.live.get(args[0])
            if fut is None or fut.done():
                return "noproc"
            fut.set_result(args[1])
            return "ok"
        try:
            sup = tree.supervisor(args[0])
        except (NoSuchPath, NotRunning):
            return "noproc"
        try:
            if kind == "terminate_child":
                await sup.terminate_child(args[1])
            elif kind == "restart_child":
                await sup.restart_child(args[1])
            elif kind == "delete_child":
                await sup.delete_child(args[1])
            elif kind == "start_child":
                await sup.start_child(self.build(args[1], _join(args[0], args[1]["id"])))
            elif kind == "start_dynamic":
                await sup.start_child([args[1]])
            elif kind == "terminate_dynamic":
                child = next((c for c in sup.children if args_of(c) == (args[1],)), None)
                if child is None:
                    return "error:not_found"
                await sup.terminate_child(child.id)
            elif kind == "count_children":
                c = sup.count_children()
                return f"specs={c.specs},active={c.active},supervisors={c.supervisors},workers={c.workers}"
        except NotRunning:
            return "noproc"
        except NoSuchPath as e:
            return "noproc" if e.what != "child" else "error:not_found"
        except OperationError as e:
            return f"error:{e.code}"
        except FailedToStartChild:
            return "error:failed"
        return "ok"

    def make_tree(self, s: dict[str, Any]) -> Tree:
        return Tree(self.build(s["tree"]))

    async def run(self, s: dict[str, Any]) -> None:
        self.out.append(f"S {s['n']}")
        self.fail = dict(s["fail_initially"])
        self.live.clear()
        self.log.clear()
        tree = self.make_tree(s)
        try:
            await tree.start()
        except FailedToStartChild:
            self.out.append("R failed_to_start")
            self.events()
            self.out.append("D")
            return
        await self.step(tree, "started")
        for action in s["actions"]:
            await self.step(tree, await self.act(tree, action))
        await tree.stop()
        self.events()


def end_as(how: str) -> None:
    """A scripted worker's end: return (``normal``), ``shutdown``, or crash."""
    if how == "shutdown":
        raise Shutdown()
    if how != "normal":
        raise RuntimeError("boom")


def _join(path: str, cid: str) -> str:
    return f"{path}/{cid}" if path else cid


def _supervisors(root: Supervisor) -> list[Supervisor]:
    out, stack = [], [root]
    while stack:
        sup = stack.pop()
        if sup.running:
            out.append(sup)
            stack += [c.handle for c in sup.children if c.state is State.RUNNING and isinstance(c.handle, Supervisor)]
    return out


async def run_all(scenarios: list[dict[str, Any]], h: Harness | None = None, timeout: float = 30) -> list[str]:
    """Every scenario's trace on ``h`` (a plain harness by default), each within ``timeout`` seconds."""
    h = h if h is not None else Harness()
    for s in scenarios:
        try:
            async with asyncio.timeout(timeout):
                await h.run(s)
        except TimeoutError:
            raise AssertionError(f"scenario {s['n']} hung on {type(h).__name__}: {s}") from None
    h.out.append("END")
    return h.out


def args_of(child: Child) -> Sequence[Any]:
    spec = child.spec
    assert isinstance(spec, WorkerSpec)
    return spec.args
