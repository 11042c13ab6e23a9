"""``mcp-supervisor``: run the daemon, check a config, and control a running daemon through its admin port."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from . import __version__
from .app import BUILTIN_WORKERS
from .config import DEFAULT_ADMIN, DEFAULT_CONFIG_PATH, ConfigError, load_config
from .core import describe

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-supervisor", description="OTP supervision trees for Linux services")
    p.add_argument("--version", action="version", version=f"mcp-supervisor {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    cfg_help = f"config file (default: $MCP_SUPERVISOR_CONFIG, then {DEFAULT_CONFIG_PATH})"
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", help=cfg_help)
    check = sub.add_parser("check-config", help="validate a config file and exit (0 valid, 78 invalid)")
    check.add_argument("--config", help=cfg_help)
    check.add_argument("path", nargs="?", help="config file (same as --config)")

    ctl = sub.add_parser("ctl", help="talk to a running daemon's admin port")
    ctl.add_argument(
        "--admin", help=f"admin address: host:port or unix:/path (default: from the config, or {DEFAULT_ADMIN})"
    )
    ctl.add_argument("--config", help="read the admin address and token file from this config")
    ctl.add_argument("--token-file", help="admin token file (default: $MCP_SUPERVISOR_TOKEN_FILE)")
    ctl.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the daemon (default 60)")
    actions = ctl.add_subparsers(dest="action", required=True)
    st = actions.add_parser("status", help="the tree: state, pid, restarts, uptime")
    st.add_argument("--json", action="store_true", help="print the raw JSON document")
    for name in ("restart", "stop", "start"):
        a = actions.add_parser(name, help=f"{name} the child at PATH (e.g. edge/proxy, web#2)")
        a.add_argument("path")
        if name == "restart":
            rolling = "replace a replicated child's instances one at a time, each ready before the next"
            a.add_argument("--rolling", action="store_true", help=rolling)
    cl = actions.add_parser("cluster", help="the fleet (nodes, singletons and their holders), or move a singleton")
    cl_actions = cl.add_subparsers(dest="cluster_action", required=True)
    cl_status = cl_actions.add_parser("status", help="nodes with heartbeat and liveness, singletons with holder")
    cl_status.add_argument("--json", action="store_true", help="print the raw JSON document")
    cl_move = cl_actions.add_parser("move", help="ask for the singleton at PATH to run on NODE")
    cl_move.add_argument("path")
    cl_move.add_argument("node")
    sc = actions.add_parser("scale", help="run N instances of the replicated child at PATH (until the next reload)")
    sc.add_argument("path")
    sc.add_argument("instances", type=int)
    st.add_argument("--watch", action="store_true", help="redraw the tree on every event (Ctrl-C ends it)")
    lg = actions.add_parser("logs", help="a child's recent output (stdout/stderr, its own log lines)")
    lg.add_argument("path")
    lg.add_argument("-n", "--lines", type=int, default=50, help="how many lines (default 50)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends it)")
    ev = actions.add_parser("events", help="recent events of the tree (started, exited, restarts, reloads, ...)")
    ev.add_argument("-n", "--lines", type=int, default=50, help="how many (default 50)")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C ends it)")
    ev.add_argument("--path", action="append", default=[], help="only this child and below (repeatable)")
    rl = actions.add_parser("reload", help="re-read the config and apply the difference")
    rl.add_argument("--wait", action="store_true", help="wait for the result (what changed, or the error)")
    actions.add_parser("health", help="run a health round now and print it")

    db = sub.add_parser("db", help="database tools, connecting with a postgres worker's settings")
    db.add_argument("--config", help=cfg_help)
    db.add_argument("--child", help="path of the postgres worker in the config (default: the first one)")
    db.add_argument("--dsn", help="connect with this DSN instead of the config")
    dbs = db.add_subparsers(dest="db_action", required=True)
    seed = dbs.add_parser("seed", help="apply a seed file (.json/.toml rows, or .sql) in one transaction")
    seed.add_argument("file")
    seed.add_argument("--force", action="store_true", help="allow env = prod")
    lint = dbs.add_parser("lint", help="check the schema (splinter's portable lints + tenant schema drift)")
    lint.add_argument("--json", action="store_true", help="findings as JSON")
    lint.add_argument("--fail-on", default="error", type=str.lower, choices=("info", "warn", "error"),
                      help="exit 1 when a finding is at this level or above (default: error)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from .app import run_daemon

        return run_daemon(args.config)
    if args.command == "check-config":
        return check_config(args.path or args.config)
    if args.command == "db":
        return asyncio.run(db_command(args))
    from .ctl import ctl

    try:
        return asyncio.run(ctl(args, *_admin_and_token(args)))
    except OSError as e:
        print(f"cannot read the token file: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C ends a follow or a watch: quietly
        return 130


async def db_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .services import pgtools
    from .services.postgres import PgSettings

    try:
        if args.dsn:
            settings = PgSettings({})  # connection details come from the DSN
        else:
            cfg = load_config(args.config, workers=BUILTIN_WORKERS)
            entries = [e for e in cfg.entries.values() if e.worker == "postgres"]
            if args.child:
                entries = [e for e in entries if e.path == args.child.strip("/")]
            if not entries:
                what = f"no postgres worker at {args.child!r}" if args.child else "no postgres worker"
                print(f"{cfg.file}: {what}; use --child PATH or --dsn", file=sys.stderr)
                return EXIT_USAGE
            settings = PgSettings(entries[0].settings)
    except (ConfigError, ValueError) as e:
        print(f"invalid config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.db_action == "seed" and (settings.env == "prod" or os.environ.get("ENV") == "prod") and not args.force:
        print("refusing to seed a production database (env = prod); add --force if you mean it", file=sys.stderr)
        return 1
    try:
        conn = await pgtools.connect(settings, args.dsn)
    except (OSError, TimeoutError) as e:
        print(f"cannot connect to {settings.describe()}: {describe(e)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as e:  # noqa: BLE001 - asyncpg's connection errors have no common base
        print(f"cannot connect to {settings.describe()}: {describe(e)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        if args.db_action == "seed":
            try:
                counts = await pgtools.seed(conn, Path(args.file))
            except (pgtools.SeedError, OSError) as e:
                print(f"seed failed, nothing was written: {e}", file=sys.stderr)
                return 1
            except Exception as e:  # noqa: BLE001 - a database error rolls the whole seed back
                print(f"seed failed, nothing was written: {describe(e)}", file=sys.stderr)
                return 1
            for table, n in counts.items():
                print(f"{table}: {n} rows inserted")
            return 0
        text, code = await pgtools.lint(conn, args.json, args.fail_on)
        print(text)
        return code
    finally:
        await conn.close()


def check_config(path: str | None) -> int:
    try:
        cfg = load_config(path, workers=BUILTIN_WORKERS)
    except ConfigError as e:
        print(f"invalid config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as e:  # noqa: BLE001 - the guard: never a traceback, always exit 78 with the reason
        print(
            f"invalid config: {path or DEFAULT_CONFIG_PATH}: cannot be loaded ({describe(e)})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    nodes = len(cfg.entries) - 1
    print(f"{cfg.file}: valid ({nodes} children; admin {cfg.daemon.admin})")
    for w in [*cfg.warnings, *_warnings(cfg.tree)]:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _warnings(spec: Any) -> list[str]:
    out = list(spec.warnings())
    for c in spec.children:
        if c.kind == "supervisor":
            out += _warnings(c)
    return out


def _admin_and_token(args: argparse.Namespace) -> tuple[str, str | None]:
    admin, token_file = args.admin, args.token_file or os.environ.get("MCP_SUPERVISOR_TOKEN_FILE")
    if admin is None or (token_file is None and args.config):
        try:
            cfg = (
                load_config(args.config, workers=BUILTIN_WORKERS)
                if (args.config or os.path.exists(DEFAULT_CONFIG_PATH))
                else None
            )
        except ConfigError:
            cfg = None
        if cfg is not None:
            admin = admin or cfg.daemon.admin
            token_file = token_file or cfg.daemon.admin_token_file
    token = None
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
    return admin or DEFAULT_ADMIN, token


if __name__ == "__main__":
    sys.exit(main())
