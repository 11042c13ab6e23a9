"""Service references follow restarts and fail with a clear ServiceUnavailable while the service is down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mcp_supervisor.core import SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.services.base import ServiceError, ServiceRef, ServiceUnavailable, service


class Counter:
    def __init__(self, generation: int) -> None:
        self.generation = generation

    async def whoami(self) -> int:
        return self.generation

    def session(self) -> Any:
        outer = self

        class CM:
            async def __aenter__(self) -> int:
                return outer.generation

            async def __aexit__(self, *exc: object) -> None:
                return None

        return CM()


async def test_a_reference_follows_restarts_and_fails_fast_while_down() -> None:
    gens = {"n": 0}

    async def svc(ctx: Any) -> None:
        gens["n"] += 1
        ctx.started(Counter(gens["n"]))
        await asyncio.Event().wait()

    refs: list[ServiceRef[Counter]] = []

    async def user(ctx: Any) -> None:
        refs.append(service(ctx, "svc", Counter, wait=0.3))
        ctx.started()
        await asyncio.Event().wait()

    tree = Tree(SupervisorSpec(id="root", children=[WorkerSpec(id="svc", run=svc), WorkerSpec(id="user", run=user)]))
    async with tree:
        ref = refs[0]
        assert await (await ref.get()).whoami() == 1
        async with ref as counter, counter.session() as g:
            assert g == 1
        await tree.terminate_child("svc")
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="svc is unavailable"):
            await ref.get()
        assert 0.3 <= time.monotonic() - t0 < 30  # waited its bounded 0.3 s (at least), then a clear error
        waiting = asyncio.ensure_future(ref.get())  # asked while down: answered once it is back
        await asyncio.sleep(0)
        await tree.restart_child("svc")
        assert await (await waiting).whoami() == 2
        assert await (await ref.get()).whoami() == 2


async def test_a_reference_checks_the_type_of_the_handle() -> None:
    refs: list[ServiceRef[Counter]] = []

    async def svc(ctx: Any) -> None:
        ctx.started("not a counter")
        await asyncio.Event().wait()

    async def user(ctx: Any) -> None:
        refs.append(service(ctx, "svc", Counter))
        ctx.started()
        await asyncio.Event().wait()

    async with Tree(
        SupervisorSpec(id="root", children=[WorkerSpec(id="svc", run=svc), WorkerSpec(id="user", run=user)])
    ):
        with pytest.raises(ServiceError, match="svc provides a str, not a Counter"):
            await refs[0].get()
