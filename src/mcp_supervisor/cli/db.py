"""``mcp-supervisor db seed`` and ``db lint``: one-shot tools that connect with a postgres worker's settings."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..core import describe
from ..daemon import exits
from ..daemon.builtins import BUILTIN_WORKERS


class _Exit(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _settings(args: argparse.Namespace) -> Any:
    """The postgres worker's settings the command connects with (``--dsn``: only the DSN's)."""
    from ..services.postgres import PgSettings

    if args.dsn:
        return PgSettings({})  # connection details come from the DSN
    try:
        cfg = load_config(args.config, workers=BUILTIN_WORKERS)
        entries = [e for e in cfg.entries.values() if e.worker == "postgres"]
        if args.child:
            entries = [e for e in entries if e.path == args.child.strip("/")]
        if not entries:
            what = f"no postgres worker at {args.child!r}" if args.child else "no postgres worker"
            raise _Exit(f"{cfg.file}: {what}; use --child PATH or --dsn", exits.USAGE)
        return PgSettings(entries[0].settings)
    except (ConfigError, ValueError) as e:
        raise _Exit(f"invalid config: {e}", exits.CONFIG) from None


async def _seed(conn: Any, file: str) -> int:
    from ..services.postgres import tools as pgtools

    try:
        counts = await pgtools.seed(conn, Path(file))
    except (pgtools.SeedError, OSError) as e:
        raise _Exit(f"seed failed, nothing was written: {e}", exits.FAILED) from None
    except Exception as e:  # noqa: BLE001 - a database error rolls the whole seed back
        raise _Exit(f"seed failed, nothing was written: {describe(e)}", exits.FAILED) from None
    for table, n in counts.items():
        print(f"{table}: {n} rows inserted")
    return exits.OK


async def db_command(args: argparse.Namespace) -> int:
    from ..services.postgres import tools as pgtools

    try:
        settings = _settings(args)
        if args.db_action == "seed" and (settings.env == "prod" or os.environ.get("ENV") == "prod") and not args.force:
            raise _Exit("refusing to seed a production database (env = prod); add --force if you mean it", 1)
        try:
            conn = await pgtools.connect(settings, args.dsn)
        except Exception as e:  # noqa: BLE001 - OSError, TimeoutError, asyncpg's errors (no common base)
            raise _Exit(f"cannot connect to {settings.describe()}: {describe(e)}", exits.UNAVAILABLE) from None
        try:
            if args.db_action == "seed":
                return await _seed(conn, args.file)
            text, code = await pgtools.lint(conn, args.json, args.fail_on)
            print(text)
            return code
        finally:
            await conn.close()
    except _Exit as e:
        print(str(e), file=sys.stderr)
        return e.code
