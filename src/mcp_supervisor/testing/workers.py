"""Workers for tests and benchmarks, named in a config as ``worker = "mcp_supervisor.testing.workers:NAME"``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any


def steady(config: Mapping[str, Any]) -> Callable[[Any], Awaitable[None]]:
    """A worker that is ready at once and runs until it is stopped."""

    async def run(ctx: Any) -> None:
        ctx.started()
        await asyncio.Event().wait()

    return run
