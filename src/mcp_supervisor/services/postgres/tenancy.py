"""Tenants as schemas: ``async with db.tenant(tenant_id) as conn`` scopes ``search_path`` to ``tenant_<id>`` for one
transaction with ``SET LOCAL`` (pgbouncer-safe); ids are validated, names quoted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from .queries import Queries
from .session import UNFINISHED
from .settings import quote_ident, tenant_schema


class Tenancy:
    @contextlib.asynccontextmanager
    async def tenant(self: Queries, tenant_id: str) -> AsyncIterator[asyncpg.Connection]:
        """One transaction whose ``search_path`` is the tenant's schema (then public)."""
        schema = tenant_schema(tenant_id)
        async with self.tracked() as conn:
            # BEGIN and SET LOCAL in one round trip; the schema name is validated and quoted
            await conn.begin(f"SET LOCAL search_path TO {quote_ident(schema)}, public")
            try:
                yield conn
            except BaseException as e:
                if not isinstance(e, UNFINISHED):  # after an unfinished query the pool closes the connection
                    await conn.end(commit=False)
                raise
            await conn.end(commit=True)

    async def create_tenant_schema(self: Queries, tenant_id: str) -> str:
        schema = tenant_schema(tenant_id)
        await self.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        return schema

    async def drop_tenant_schema(self: Queries, tenant_id: str, cascade: bool = False) -> None:
        schema = tenant_schema(tenant_id)
        await self.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)}{' CASCADE' if cascade else ''}")
