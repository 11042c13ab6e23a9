"""What the handle's feature mixins (tenancy, timescale) need from it: a structural type, so they import no
handle and the handle imports them."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import asyncpg

from .settings import PgSettings


class Queries(Protocol):
    settings: PgSettings
    extensions: dict[str, str]

    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> Sequence[asyncpg.Record]: ...

    async def execute(self, sql: str, *args: Any, timeout: float | None = None) -> str: ...

    def transaction(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

    def tracked(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...
