"""The differential scenarios with one supervisor isolated (``isolation = "process"``): the same trace as
``core_side.py`` and ``otp_diff.erl``, while the subtree of a child supervisor of the root runs in a process of its
own — forked by the fork server, talking to this one over its control channel as the daemon's subtrees do.

This module is both sides: :class:`IsoHarness` runs the scenario here (the root, and the isolated supervisor as one
OS child), and ``main`` is the isolated process (its subtree, run by :class:`~mcp_supervisor.daemon.isolated.Runner`
with two more requests: ``act`` — a runtime operation on a supervisor inside — and ``settle``, which answers with its
``T`` lines once its tree has settled). Its workers ask this side whether to fail their start and tell it their
starts and stops (calls to the name ``harness``), so that the one trace is written here, in order; a crash is a call
to the worker's own mailbox (its harness path, registered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any, cast

from tests.otp.core_side import Harness, _join, end_as, run_all

from mcp_supervisor.config.children import ISOLATED_EXITS, ISOLATED_READY
from mcp_supervisor.core import (
    Call,
    CalleeExited,
    Mailbox,
    NotRunning,
    ProcessSpec,
    ReadyOutput,
    State,
    Tree,
)
from mcp_supervisor.daemon.isolated import Runner, run_runner
from mcp_supervisor.daemon.link import Link
from mcp_supervisor.daemon.subtrees import Subtrees

MODULE = "tests.otp.isolated_side"


def isolatable(s: dict[str, Any]) -> str | None:
    """The id of the root's first static child supervisor (the one to isolate), or None."""
    root = s["tree"]
    if root["flags"]["strategy"] == "simple_one_for_one":
        return None
    return next((c["id"] for c in root["children"] if c["kind"] == "sup"
                 and c["flags"]["strategy"] != "simple_one_for_one"), None)  # fmt: skip


def sample(scenarios: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` scenarios with a supervisor to isolate, without ``count_children`` on the root (OTP counts
    the isolated supervisor among the root's supervisors, we among its OS processes: the one deviation)."""
    out = []
    for s in scenarios:
        if isolatable(s) is None:
            continue
        actions = [a for a in s["actions"] if not (a[0] == "count_children" and a[1] == "")]
        out.append({**s, "actions": actions})
        if len(out) == n:
            break
    return out


# -- this side -------------------------------------------------------------------------------------------------
class IsoHarness(Harness):
    def __init__(self) -> None:
        super().__init__()
        self.iso = ""  # the isolated supervisor's path (a child of the root)
        self.mailbox = Mailbox("harness")  # the isolated workers' calls

    def build(self, node: dict[str, Any], path: str = "") -> Any:
        if path and path == self.iso and node["kind"] == "sup":  # (a worker started later under its id is not)
            return ProcessSpec(
                id=node["id"], restart=node["restart"], significant=node["significant"], shutdown=30.0,
                command=[sys.executable, "-m", MODULE, json.dumps(node), path],
                ready=ReadyOutput(pattern=ISOLATED_READY, timeout=30.0), control=True, template=MODULE,
                exit_reasons=ISOLATED_EXITS,
            )  # fmt: skip
        return super().build(node, path)

    async def serve_workers(self, mailbox: Mailbox) -> None:
        """The isolated workers' calls: may I start (else: start_failed), I started, I stopped."""
        while True:
            msg = await mailbox.receive()
            assert isinstance(msg, Call)
            what, path = msg.payload
            if what == "starting":
                failing = self.fail.get(path, 0) > 0
                if failing:
                    self.fail[path] -= 1
                self.log.append(("start_failed" if failing else "start", path))
                msg.reply(failing)
            else:
                self.log.append(("stop", path))
                msg.reply(None)

    def inside(self, path: str) -> bool:
        """A path in the isolated subtree: the isolated supervisor's own (its root there) or below it."""
        return path == self.iso or path.startswith(self.iso + "/")

    async def act(self, tree: Tree, action: tuple[Any, ...]) -> str:
        kind, *args = action
        target = args[0] if args else ""
        if isinstance(target, str) and self.inside(target):
            if kind == "fail_starts":
                return await super().act(tree, action)
            try:
                if kind == "crash":
                    await tree.call(target, args[1].name, timeout=10)
                    return "ok"
                doc = [kind, target[len(self.iso) + 1 :], *(a.name if hasattr(a, "name") else a for a in args[1:])]
                if kind == "start_child" and isinstance(args[1], dict):  # the spec's paths are built inside
                    doc[2] = args[1]
                link = self.link()
                return str(await link.request({"op": "act", "action": doc}, 30)) if link else "noproc"
            except (NotRunning, CalleeExited):
                return "noproc"
        return await super().act(tree, action)

    def link(self) -> Link | None:
        return self.subtrees.links.get(self.iso)

    async def inner_lines(self, tree: Tree) -> list[str] | None:
        try:
            child = tree.child(self.iso)
        except LookupError:
            return None
        link = self.link()
        if child.state is not State.RUNNING or link is None:
            return None
        try:
            lines = cast(list[str] | None, await link.request({"op": "settle"}, 30))
        except (NotRunning, CalleeExited, TimeoutError):
            return None
        if lines is None and child.exit_fut is not None:  # its root is gone: its process is ending, wait for it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.exit_fut), 30)
        return lines

    async def settle(self, tree: Tree) -> None:
        """The core harness's settle, retried while the isolated supervisor's process (re)starts: a fork, or an
        exec on a loaded machine, can take longer than its loop turns."""
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                return await super().settle(tree)
            except AssertionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.01)

    async def step(self, tree: Tree, result: str) -> None:
        last: list[str] | None = None
        for _ in range(100):  # both sides settled, and the same twice in a row
            await self.settle(tree)
            inner = await self.inner_lines(tree)
            await self.settle(tree)
            snap = self.snapshot(tree, {self.iso: inner or []})
            if snap == last:
                break
            last = snap
        self.out.append(f"R {result}")
        self.events()
        self.out += last or []

    def make_tree(self, s: dict[str, Any]) -> Tree:
        tree = super().make_tree(s)
        self.subtrees = Subtrees(tree, lambda: [self.iso])
        tree.use_fork_server()
        tree.rt.registry.register("harness", self.mailbox)
        return tree

    async def run(self, s: dict[str, Any]) -> None:
        self.iso = isolatable(s) or ""
        try:
            await super().run(s)
        finally:
            await self.subtrees.close()

    async def run_all(self, scenarios: list[dict[str, Any]]) -> list[str]:
        server = asyncio.ensure_future(self.serve_workers(self.mailbox))
        try:
            return await run_all(scenarios, self, timeout=60)
        finally:
            server.cancel()

    subtrees: Subtrees


# -- the isolated process ----------------------------------------------------------------------------------------
class InnerHarness(Harness):
    """The subtree's workers: they ask the other side, by call, whether to fail, and tell it their ends."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def worker(self, path_of: Any) -> Any:
        async def run(ctx: Any) -> None:
            rel = path_of(ctx)
            path = _join(self.prefix, rel)
            if await ctx.call("harness", ["starting", path], timeout=10):
                raise RuntimeError("boom")
            ctx.register(rel)  # a crash is a call to it (a dynamic child's name is not its path)
            ctx.started()
            try:
                msg = await ctx.receive()
                assert isinstance(msg, Call)
                how = msg.payload
                msg.reply("ok")
            finally:
                await ctx.call("harness", ["stop", path], timeout=10)
            end_as(how)

        return run


class HarnessRunner(Runner):
    def __init__(self, tree: Tree, path: str, harness: InnerHarness) -> None:
        super().__init__(cast(Any, None), tree, path)
        self.harness = harness

    async def request(self, doc: dict[str, Any]) -> Any:
        if doc.get("op") == "settle":
            await self.harness.settle(self.tree)
            lines = self.harness.snapshot(self.tree)
            if lines == ["D"]:
                return None  # its root is gone: this process is about to exit
            return [_prefix(line, self.path) for line in lines]
        if doc.get("op") == "act":
            return await self.harness.act(self.tree, tuple(doc["action"]))
        return await super().request(doc)


def _prefix(line: str, iso: str) -> str:
    _, path, rest = line.split(" ", 2)
    return f"T {iso if path == '/' else f'{iso}/{path}'} {rest}"


async def _inner(node: dict[str, Any], path: str) -> int:
    harness = InnerHarness(path)
    return await run_runner(HarnessRunner(Tree(harness.build(node, ""), subreaper=True), path, harness))


def main(argv: list[str]) -> int:
    return asyncio.run(_inner(json.loads(argv[0]), argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
