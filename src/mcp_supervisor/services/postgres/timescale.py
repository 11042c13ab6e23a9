"""TimescaleDB hypertables and soft deletes (the seed's AshArchival): extension detection, ``archived_at``, a view of
live rows, partial unique indexes, archive/restore/purge. Every name validated and quoted, every value a parameter."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .queries import Queries
from .settings import IDENT, ExtensionMissing, interval_param, qualified, quote_ident


async def _detect(db: Queries) -> dict[str, str]:
    rows = await db.fetch("SELECT extname, extversion FROM pg_extension")
    db.extensions = {r["extname"]: r["extversion"] for r in rows}
    return db.extensions


async def _set_archived(db: Queries, table: str, key: Any, key_column: str, value: str) -> bool:
    if not IDENT.match(key_column):
        raise ValueError(f"invalid key column {key_column!r}")
    cond = "archived_at IS NULL" if value != "NULL" else "archived_at IS NOT NULL"
    status = await db.execute(
        f"UPDATE {qualified(table)} SET archived_at = {value} WHERE {quote_ident(key_column)} = $1 AND {cond}", key
    )
    return status.endswith(" 1")


class Timescale:
    async def detect_extensions(self: Queries) -> dict[str, str]:
        """The installed extensions (name → version), remembered in ``extensions``."""
        return await _detect(self)

    async def create_hypertable(
        self: Queries, table: str, time_column: str, chunk_interval: str | dt.timedelta = "7 days"
    ) -> None:
        """TimescaleDB ``create_hypertable(..., by_range(...), if_not_exists => TRUE)``: parameterised, idempotent."""
        if "timescaledb" not in await _detect(self):
            raise ExtensionMissing(
                "create_hypertable needs the timescaledb extension, which is not installed in "
                f"{self.settings.database!r} (CREATE EXTENSION timescaledb, on a server that has it)"
            )
        if not IDENT.match(time_column):
            raise ValueError(f"invalid time column {time_column!r}")
        await self.execute(
            f"SELECT create_hypertable($1::regclass, by_range($2, {interval_param(chunk_interval, 3)}), "
            "if_not_exists => TRUE)",
            qualified(table),
            time_column,
            chunk_interval,
        )

    # -- soft deletes (AshArchival) ------------------------------------------------------------------------
    async def enable_archival(self: Queries, table: str, unique: tuple[str, ...] = ()) -> None:
        """Add ``archived_at``, a view of live rows (``<table>_active``) and partial unique indexes."""
        q = qualified(table)
        base = table.rsplit(".", maxsplit=1)[-1]
        async with self.transaction() as conn:
            await conn.execute(f"ALTER TABLE {q} ADD COLUMN IF NOT EXISTS archived_at timestamptz")
            view = qualified(f"{table}_active")
            await conn.execute(f"CREATE OR REPLACE VIEW {view} WITH (security_invoker = true) AS "
                               f"SELECT * FROM {q} WHERE archived_at IS NULL")  # fmt: skip
            if unique:
                if not all(IDENT.match(c) for c in unique):
                    raise ValueError(f"invalid column in {unique!r}")
                cols = ", ".join(quote_ident(c) for c in unique)
                index = quote_ident(f"{base}_{'_'.join(unique)}_live_key")
                await conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {q} ({cols}) "
                                   "WHERE archived_at IS NULL")  # fmt: skip

    async def archive(self: Queries, table: str, key: Any, key_column: str = "id") -> bool:
        return await _set_archived(self, table, key, key_column, "now()")

    async def restore(self: Queries, table: str, key: Any, key_column: str = "id") -> bool:
        return await _set_archived(self, table, key, key_column, "NULL")

    async def purge(self: Queries, table: str, older_than: str | dt.timedelta = "30 days") -> int:
        """Hard-delete rows archived more than ``older_than`` ago (``"30 days"`` or a timedelta)."""
        status = await self.execute(
            f"DELETE FROM {qualified(table)} WHERE archived_at < now() - {interval_param(older_than)}", older_than
        )
        return int(status.split()[-1])
