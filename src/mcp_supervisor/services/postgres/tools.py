"""``mcp-supervisor db seed`` and ``db lint``: one-shot tools that connect with a postgres worker's settings."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import asyncpg

from .lint import at_or_above, render_table, run_lints
from .settings import IDENT, PgSettings, qualified, quote_ident


class SeedError(Exception):
    pass


async def connect(settings: PgSettings, dsn: str | None = None) -> asyncpg.Connection:
    if dsn:
        return await asyncpg.connect(dsn, timeout=settings.connect_timeout)
    return await asyncpg.connect(
        host=settings.host, port=settings.port, user=settings.user, password=settings.password,
        database=settings.database, ssl=settings.ssl(), timeout=settings.connect_timeout,
    )  # fmt: skip


def load_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """A ``.json`` or ``.toml`` seed: ``{"schema.table": [{"col": value, ...}, ...]}``."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise SeedError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise SeedError(f"{path}: expected a table of table names to lists of rows")
    for table, rows in data.items():
        if not isinstance(rows, list) or not all(isinstance(r, dict) and r for r in rows):
            raise SeedError(f"{path}: {table}: expected a list of non-empty rows")
    return data


async def seed(conn: asyncpg.Connection, path: Path) -> dict[str, int]:
    """Apply a seed in one transaction. Rows use ``INSERT ... ON CONFLICT DO NOTHING`` (idempotent); a ``.sql``
    seed is run as it is (write it idempotently). Returns rows inserted per table."""
    inserted: dict[str, int] = {}
    sql = path.read_text(encoding="utf-8") if path.suffix == ".sql" else None  # noqa: ASYNC240 - a CLI, one file
    data = load_rows(path) if sql is None else {}
    async with conn.transaction():
        if sql is not None:
            await conn.execute(sql)
            return {"(sql)": 0}
        for table, rows in data.items():
            target = qualified(table)
            count = 0
            for row in rows:
                cols = list(row)
                bad = [c for c in cols if not IDENT.match(c)]
                if bad:
                    raise SeedError(f"{table}: invalid column name {bad[0]!r}")
                placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
                status = await conn.execute(
                    f"INSERT INTO {target} ({', '.join(quote_ident(c) for c in cols)}) "
                    f"VALUES ({placeholders}) ON CONFLICT DO NOTHING",
                    *row.values(),
                )
                count += int(status.split()[-1])
            inserted[table] = count
    return inserted


async def lint(conn: asyncpg.Connection, as_json: bool, fail_on: str) -> tuple[str, int]:
    findings = await run_lints(conn)
    text = json.dumps([f.as_dict() for f in findings], indent=2, default=str) if as_json else render_table(findings)
    return text, 1 if at_or_above(findings, fail_on) else 0
