"""Model-based test: a Hypothesis state machine drives a real supervisor and a small reference model of its
semantics side by side — crashes with each exit reason, every runtime operation, and time moving on (a ManualClock,
so intensity windows expire exactly) — and after every step the children, their states, how many times each has
started, and whether the supervisor is alive must agree. The differential test checks the same semantics against
Erlang/OTP without time; this one adds the window."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mcp_supervisor.core import (
    FailedToStartChild,
    ManualClock,
    NoSuchPath,
    NotRunning,
    OperationError,
    Restart,
    Shutdown,
    State,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    Tree,
    WorkerSpec,
)

IDS = ("a", "b", "c", "d")
RESTARTS = ("permanent", "transient", "temporary")


@dataclass
class Kid:
    id: str
    restart: str
    running: bool = True


@dataclass
class Model:
    """The reference: OTP's rules written as plainly as possible."""

    strategy: str
    intensity: int
    period: float
    kids: list[Kid] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)
    alive: bool = True
    now: float = 1000.0

    def find(self, cid: str) -> Kid | None:
        return next((k for k in self.kids if k.id == cid), None)

    def start(self, kid: Kid) -> None:
        kid.running = True
        self.starts[kid.id] = self.starts.get(kid.id, 0) + 1

    def exited(self, kid: Kid, reason: str) -> None:
        kid.running = False
        if kid.restart == "temporary":
            self.kids.remove(kid)
            return
        if kid.restart == "transient" and reason != "abnormal":
            return
        self.window = [t for t in self.window if self.now - t <= self.period] + [self.now]
        if len(self.window) > self.intensity:
            self.alive = False
            return
        if self.strategy == "one_for_one":
            group = [kid]
        elif self.strategy == "one_for_all":
            group = list(self.kids)
        else:
            group = self.kids[self.kids.index(kid) :]
        for k in group:  # temporary siblings caught in a group restart are removed, never restarted
            if k is not kid and k.restart == "temporary":
                self.kids.remove(k)
        for k in group:
            if k in self.kids:
                self.start(k)


class Machine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tree: Tree | None = None
        self.model: Model | None = None
        self.clock = ManualClock()
        self.exits: dict[str, asyncio.Future[str]] = {}
        self.starts: dict[str, int] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def worker(self) -> Any:
        async def run(ctx: Any) -> None:
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self.exits[ctx.id] = fut
            self.starts[ctx.id] = self.starts.get(ctx.id, 0) + 1
            ctx.started()
            how = await fut
            if how == "shutdown":
                raise Shutdown()
            if how == "abnormal":
                raise RuntimeError("crash")

        return run

    @initialize(
        strategy=st.sampled_from(("one_for_one", "one_for_all", "rest_for_one")),
        intensity=st.integers(0, 3),
        period=st.sampled_from((0.5, 1.0, 2.0)),  # commensurate with the time steps: exact edges are common
        restarts=st.lists(st.sampled_from(RESTARTS), min_size=1, max_size=4),
    )
    def build(self, strategy: str, intensity: int, period: float, restarts: list[str]) -> None:
        kids = [Kid(IDS[i], r) for i, r in enumerate(restarts)]
        self.model = Model(strategy, intensity, period, kids, starts={k.id: 1 for k in kids}, now=self.clock.now())
        spec = SupervisorSpec(
            id="root",
            flags=SupervisorFlags(strategy=Strategy(strategy), intensity=intensity, period=period),
            children=[WorkerSpec(id=k.id, run=self.worker(), restart=Restart(k.restart)) for k in kids],
        )
        self.tree = Tree(spec, clock=self.clock)
        self.run(self.tree.start())

    async def settle(self) -> None:
        assert self.tree is not None
        for _ in range(6):
            if not self.tree.done and self.tree.root.running:
                try:
                    await self.tree.root.sync()
                except NotRunning:
                    pass
            await asyncio.sleep(0)

    @precondition(lambda self: self.model is not None and self.model.alive)
    @rule(cid=st.sampled_from(IDS), reason=st.sampled_from(("normal", "shutdown", "abnormal")))
    def crash(self, cid: str, reason: str) -> None:
        assert self.model is not None
        kid = self.model.find(cid)
        fut = self.exits.get(cid)
        if kid is None or not kid.running:
            return
        assert fut is not None and not fut.done()
        fut.set_result(reason)
        self.model.exited(kid, reason)
        self.run(self.settle())

    @precondition(lambda self: self.model is not None)
    @rule(seconds=st.sampled_from((0.25, 0.5, 1.0, 5.0)))
    def time_passes(self, seconds: float) -> None:
        assert self.model is not None
        self.clock.advance(seconds)
        self.model.now += seconds

    @precondition(lambda self: self.model is not None and self.model.alive)
    @rule(cid=st.sampled_from(IDS), op=st.sampled_from(("terminate", "restart", "delete")))
    def operation(self, cid: str, op: str) -> None:
        assert self.model is not None and self.tree is not None
        kid = self.model.find(cid)
        expected: str
        if kid is None:
            expected = "not_found"
        elif op == "terminate":
            expected = "ok"
            kid.running = False
            if kid.restart == "temporary":
                self.model.kids.remove(kid)
        elif kid.running:
            expected = "running"
        elif op == "restart":
            expected = "ok"
            self.model.start(kid)
        else:
            expected = "ok"
            self.model.kids.remove(kid)
        call = {"terminate": self.tree.terminate_child, "restart": self.tree.restart_child,
                "delete": self.tree.delete_child}[op]  # fmt: skip
        try:
            self.run(call(cid))
            got = "ok"
        except NoSuchPath:
            got = "not_found"
        except OperationError as e:
            got = e.code
        except FailedToStartChild:
            got = "failed"
        assert got == expected, (op, cid, got, expected)
        self.run(self.settle())

    @precondition(lambda self: self.model is not None and self.model.alive)
    @rule(cid=st.sampled_from(IDS), restart=st.sampled_from(RESTARTS))
    def start_child(self, cid: str, restart: str) -> None:
        assert self.model is not None and self.tree is not None
        kid = self.model.find(cid)
        expected = "ok" if kid is None else ("already_started" if kid.running else "already_present")
        try:
            self.run(self.tree.start_child("", WorkerSpec(id=cid, run=self.worker(), restart=Restart(restart))))
            got = "ok"
        except OperationError as e:
            got = e.code
        assert got == expected
        if kid is None:
            new = Kid(cid, restart, running=False)
            self.model.kids.append(new)
            self.model.start(new)
        self.run(self.settle())

    @invariant()
    def agrees(self) -> None:
        if self.model is None or self.tree is None:
            return
        alive = not self.tree.done and self.tree.root.running
        assert alive == self.model.alive
        if not alive:
            return
        ours = [(c.id, c.state is State.RUNNING) for c in self.tree.root.children]
        assert ours == [(k.id, k.running) for k in self.model.kids]
        assert {k: v for k, v in self.starts.items() if v} == self.model.starts

    def teardown(self) -> None:
        if self.tree is not None:
            self.run(self.tree.stop())
        self.loop.close()


TestSupervisorAgainstItsModel = Machine.TestCase
TestSupervisorAgainstItsModel.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
