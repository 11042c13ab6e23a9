"""The worker of docs/workers.md: every few seconds, delete expired sessions (``worker = "examples.jobs:factory"``).

Type-checked with ``mypy --strict`` in the test command, so the documented API is the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp_supervisor.worker import ChildContext, Database, ServiceUnavailable, Settings, service


def factory(config: Mapping[str, Any]) -> Callable[[ChildContext[None]], Awaitable[None]]:
    s = Settings(config, {"every", "db"})  # unknown keys are errors
    every = s.seconds("every", 5.0, above=True)  # checked at load time: a bad value never starts
    path = s.text("db", "postgres/db") or "postgres/db"

    async def run(ctx: ChildContext[None]) -> None:
        db = service(ctx, path, Database)  # a typed reference that follows restarts of that child
        ctx.started()  # ready: the supervisor starts the next child
        while True:
            try:
                async with db as h:  # h: Database
                    await h.execute("DELETE FROM sessions WHERE expires_at < now()")
            except ServiceUnavailable:
                pass  # the database is restarting; next round
            await asyncio.sleep(every)

    return run
