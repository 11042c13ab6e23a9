"""``mcp-supervisor``: run the daemon, check a config, and control a running daemon through its admin port."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from .. import __version__
from ..config import DEFAULT_ADMIN, DEFAULT_CONFIG_PATH, ConfigError, load_config
from ..core import Address, describe
from ..daemon import exits
from ..daemon.builtins import BUILTIN_WORKERS


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
    mc = sub.add_parser("mcp", help="a Model Context Protocol server over stdio for agents (needs the [mcp] extra)",
                        description="Serve the running daemon to an agent over MCP (stdio): the tree, logs, events, "
                        "why a child died, health, the config (secrets masked); the mutations [daemon.mcp] allow "
                        "lists, with the admin token. docs/mcp.md.")  # fmt: skip
    _connection_options(mc, {"admin": None, "config": None, "token_file": None, "timeout": 30.0})
    mc.add_argument("--http", metavar="HOST:PORT", help="serve Streamable HTTP at http://HOST:PORT/mcp (loopback; "
                    "every request needs the admin token) instead of stdio")  # fmt: skip
    imp = sub.add_parser("import", help="write a supervision.toml from a supervisord.conf, a Procfile or a PM2 "
                                        "ecosystem file", description="Read FILE (supervisord.conf and its [include]s, "
                                        "a Procfile and the .env beside it, or a PM2 ecosystem file: JSON, YAML or "
                                        "JavaScript) and write a supervision.toml with a comment wherever something "
                                        "was approximated or left out; a summary goes to stderr. docs/importing.md "
                                        "has the mapping.")  # fmt: skip
    imp.add_argument("file")
    imp.add_argument("--format", choices=("supervisord", "procfile", "pm2"), help="default: from the file's name")
    imp.add_argument("-o", "--output", help="write here (refuses to overwrite; default: stdout)")
    imp.add_argument("--env", dest="env_name", metavar="NAME", help="PM2: use env_NAME (as pm2 start --env NAME)")

    ctl = sub.add_parser(
        "ctl",
        help="talk to a running daemon's admin port",
        description="Talk to a running daemon. Exit codes: 0 done, 1 the action or check failed, 2 usage error, "
        "3 the daemon could not be reached, 4 unauthorized, 78 invalid config.",
    )
    _connection_options(ctl, {"admin": None, "config": None, "token_file": None, "timeout": 60.0})
    # the same options after the command (`ctl stop web --token-file F`); given there, they win
    conn = argparse.ArgumentParser(add_help=False)
    _connection_options(conn, None)
    actions = ctl.add_subparsers(dest="action", required=True, metavar="COMMAND")

    def command(name: str, text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=text, description=text, parents=[conn])
        if json_flag:
            parser.add_argument("--json", action="store_true", help="print the port's JSON documents")
        return parser

    st = command("status", "the tree: state, pid, restarts, uptime")
    st.add_argument("--watch", action="store_true", help="redraw the tree on every event (Ctrl-C ends it)")
    for name in ("restart", "stop", "start"):
        a = command(name, f"{name} children: paths (edge/proxy, web#2), globs (web#*, edge/*) or all")
        a.add_argument("paths", nargs="+", metavar="PATH")
        a.add_argument("--rolling", action="store_true", help=argparse.SUPPRESS if name != "restart" else
                       "replace a replicated child's instances one at a time, each ready before the next")  # fmt: skip
    cl = actions.add_parser("cluster", help="the fleet (nodes, singletons and their holders), or move a singleton",
                            parents=[conn])  # fmt: skip
    cl_actions = cl.add_subparsers(dest="cluster_action", required=True)
    cl_status = cl_actions.add_parser("status", help="nodes with heartbeat and liveness, singletons with holder",
                                      parents=[conn])  # fmt: skip
    cl_status.add_argument("--json", action="store_true", help="print the raw JSON document")
    cl_move = cl_actions.add_parser("move", help="ask for the singleton at PATH to run on NODE", parents=[conn])
    cl_move.add_argument("path")
    cl_move.add_argument("node")
    cl_move.add_argument("--json", action="store_true", help="print the raw JSON document")
    al = actions.add_parser("alerts", help="the alert receivers and how they fare, or send one a test alert",
                            parents=[conn])  # fmt: skip
    al.add_argument("--json", action="store_true", help="print the port's JSON document")
    al_actions = al.add_subparsers(dest="alerts_action")
    al_test = al_actions.add_parser("test", help="send the receiver NAME a test alert now (exit 1 if not taken)",
                                    parents=[conn])  # fmt: skip
    al_test.add_argument("name")
    al_test.add_argument("--json", action="store_true", help="print the port's JSON document")
    sg = command("signal", "send a signal to an OS child's process (HUP, USR1, ...): supervisorctl's signal")
    sg.add_argument("path", help="a path or a glob")
    sg.add_argument("signal", help="a name (HUP, SIGHUP) or a number")
    sg.add_argument("--group", action="store_true", help="to its whole process group")
    sc = command("scale", "run N instances of the replicated child at PATH (until the next reload)")
    sc.add_argument("path")
    sc.add_argument("instances", type=int)
    lg = command("logs", "recent output (stdout/stderr, own log lines) of a child, or of all children of a supervisor")
    lg.add_argument("path")
    lg.add_argument("-n", "--lines", type=int, default=50, help="how many lines (default 50)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends it)")
    wy = command("why", "why a child ended: its exit history, crash loop, last output and a diagnosis")
    wy.add_argument("path")
    ev = command("events", "recent events (started, exited, restarts, reloads, health, ...)")
    ev.add_argument("-n", "--lines", type=int, default=50, help="how many (default 50)")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C ends it)")
    ev.add_argument("--path", action="append", default=[], help="only this child and below (repeatable)")
    ev.add_argument("--type", action="append", default=[], help="only events of this type (repeatable)")
    ev.add_argument("--all", action="store_true", help="also output lines and service operations (hidden by default)")
    rl = command("reload", "re-read the config and apply the difference (an invalid file is refused: exit 78)")
    rl.add_argument("--wait", action="store_true", help="wait for the result and print what changed")
    command("health", "run a health round now and print it (exit 1 when it fails)")

    su = sub.add_parser(
        "systemd-unit",
        help="print a systemd unit for this install and config (pm2 startup)",
        description="A systemd unit whose ExecStart= is this install's command and whose sandbox fits what the "
        "config needs (users, limits, low ports). Install it: -o /etc/systemd/system, then "
        "systemctl daemon-reload && systemctl enable --now mcp-supervisor.",
    )
    su.add_argument("--config", help=cfg_help)
    su.add_argument("--user", action="store_true", help="a unit for `systemctl --user` (~/.config/systemd/user)")
    su.add_argument("--delegate", action="store_true", help="Delegate=yes: a cgroup per OS child")
    su.add_argument("--sockets", action="store_true", help="also a .socket unit holding [[daemon.sockets]]")
    su.add_argument("--notify-reload", action="store_true", help="Type=notify-reload (systemd >= 253)")
    su.add_argument("--name", default="mcp-supervisor", help="the unit's name (default mcp-supervisor)")
    su.add_argument("-o", "--output-dir", help="write the unit file(s) here instead of printing them")
    su.add_argument("--exe", help="the command in ExecStart= (default: this install's)")
    su.add_argument("--unit-config", help="the config path in the unit (default: --config's, made absolute)")
    su.add_argument("--systemd-version", type=int, help="the target's systemd version (default: this machine's)")

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


def _connection_options(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None) -> None:
    """``--admin``, ``--config``, ``--token-file``, ``--timeout``: with ``defaults`` None they are left unset when not
    given (argparse.SUPPRESS), so that a subcommand's copy overrides the ``ctl`` one only when used."""

    def default(name: str) -> Any:
        return argparse.SUPPRESS if defaults is None else defaults[name]

    parser.add_argument("--admin", type=_address, default=default("admin"),
                        help="admin address: host:port or unix:/path (default: the running daemon's)")  # fmt: skip
    parser.add_argument("--config", default=default("config"),
                        help="reach the daemon this config describes (its admin address and token file)")  # fmt: skip
    parser.add_argument("--token-file", default=default("token_file"),
                        help="admin token file (default: the one the daemon reads)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=default("timeout"),
                        help="seconds to wait for the daemon (default 60)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from ..daemon.app import run_daemon

        return run_daemon(args.config)
    if args.command == "check-config":
        return check_config(args.path or args.config)
    if args.command == "db":
        from .db import db_command

        return asyncio.run(db_command(args))
    if args.command == "systemd-unit":
        return systemd_unit(args, argv)
    if args.command == "import":
        return import_config(args)
    if args.command == "mcp":
        return mcp_server(args)
    from .ctl import Failed, ctl

    try:
        target = locate(args)
    except Failed as e:
        print(f"ctl: {e}", file=sys.stderr)
        return e.code
    try:
        return asyncio.run(ctl(args, target))
    except KeyboardInterrupt:  # Ctrl-C ends a follow or a watch: quietly
        return exits.INTERRUPTED


def check_config(path: str | None) -> int:
    """``run``'s verdict without running: the same load (the token file too), the same errors."""
    from ..daemon.app import load

    try:
        cfg, _ = load(path)
    except ConfigError as e:
        print(f"invalid config: {e}", file=sys.stderr)
        return exits.CONFIG
    except Exception as e:  # noqa: BLE001 - the guard: never a traceback, always exit 78 with the reason
        print(
            f"invalid config: {path or DEFAULT_CONFIG_PATH}: cannot be loaded ({describe(e)})",
            file=sys.stderr,
        )
        return exits.CONFIG
    nodes = len(cfg.entries) - 1
    print(f"{cfg.file}: valid ({nodes} children; admin {cfg.daemon.admin})")
    for included in cfg.includes:
        print(f"  included {included}")
    for w in [*cfg.warnings, *_warnings(cfg.tree)]:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def mcp_server(args: argparse.Namespace) -> int:
    """``mcp-supervisor mcp``: the MCP server over stdio (stdout is the protocol's: messages go to stderr)."""
    from .ctl import Failed

    try:
        from .agent import serve
    except ImportError as e:
        print(f"mcp: the MCP server needs the official SDK, which is not installed ({e}): "
              "pip install 'mcp-supervisor-otp[mcp]'", file=sys.stderr)  # fmt: skip
        return exits.UNAVAILABLE
    try:
        target = locate(args)
    except Failed as e:
        print(f"mcp: {e}", file=sys.stderr)
        return e.code
    try:
        return serve(args, target)
    except Failed as e:
        print(f"mcp: {e}", file=sys.stderr)
        return e.code


def import_config(args: argparse.Namespace) -> int:
    """``mcp-supervisor import FILE``: the TOML on stdout or in ``-o``, the summary on stderr; 0 when the result is
    a valid config, 1 when the file could not be imported, 78 when what it made is not valid (a bug: said so)."""
    from ..config import parse_config
    from ..config.importers import import_file, render

    if not os.path.isfile(args.file):
        print(f"import: cannot read {args.file}: no such file", file=sys.stderr)
        return exits.FAILED
    try:
        imported = import_file(args.file, args.format, args.env_name)
    except OSError as e:
        print(f"import: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
        return exits.FAILED
    except ValueError as e:
        print(f"import: {args.file}: {e}", file=sys.stderr)
        return exits.FAILED
    text = render(imported)
    try:
        parse_config(text, args.output or "<imported>", env={**os.environ, **_placeholders(text)})
    except ConfigError as e:
        print(text, file=sys.stdout)
        print(f"import: what {args.file} became is not a valid config ({e}); please report it", file=sys.stderr)
        return exits.CONFIG
    if args.output:
        try:
            with open(args.output, "x", encoding="utf-8") as f:
                f.write(text)
        except FileExistsError:
            print(f"import: {args.output} exists: not overwritten (remove it, or choose another -o)", file=sys.stderr)
            return exits.FAILED
    else:
        sys.stdout.write(text)
    print(imported.summary(), file=sys.stderr)
    for n in imported.notes + [n for p in imported.programs for n in p.notes]:
        if n.kind == "trap":
            print(f"warning: {n.where + ': ' if n.where else ''}{n.text}", file=sys.stderr)
    if args.output:
        print(f"wrote {args.output}; next: mcp-supervisor check-config {args.output}", file=sys.stderr)
    return exits.OK


def _placeholders(text: str) -> dict[str, str]:
    """A value for every ``${VAR}`` the import left for the load (supervisord's %(ENV_X)s): the check is of the
    shape, not of this machine's environment."""
    import re

    return {m: "x" for m in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text)}


def systemd_unit(args: argparse.Namespace, argv: list[str] | None) -> int:
    from pathlib import Path

    from . import units

    path = args.config or os.environ.get("MCP_SUPERVISOR_CONFIG") or DEFAULT_CONFIG_PATH
    try:
        cfg = load_config(path, workers=BUILTIN_WORKERS)
        text = Path(path).read_text(encoding="utf-8")
    except (ConfigError, OSError) as e:
        print(f"invalid config: {e}", file=sys.stderr)
        return exits.CONFIG
    opts = units.UnitOptions(
        exe=args.exe or units.this_command(),
        config=args.unit_config or os.path.abspath(path),
        name=args.name,
        user_unit=args.user,
        delegate=args.delegate,
        sockets=args.sockets,
        notify_reload=args.notify_reload,
        systemd_version=args.systemd_version if args.systemd_version is not None else units.systemd_version(),
        generated_by=" ".join((argv if argv is not None else sys.argv[1:])[1:]),
    )
    rendered, warnings = units.render(cfg, opts, text)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.output_dir:
        for name, body in rendered.items():
            target = Path(args.output_dir) / name
            target.write_text(body, encoding="utf-8")
            print(f"wrote {target}")
        scope = "--user " if args.user else ""
        print(f"then: systemctl {scope}daemon-reload && systemctl {scope}enable --now {args.name}")
        return 0
    print("\n".join(rendered.values()), end="")
    return 0


def _warnings(spec: Any) -> list[str]:
    out = list(spec.warnings())
    for c in spec.children:
        if c.kind == "supervisor":
            out += _warnings(c)
    return out


def locate(args: argparse.Namespace) -> Any:
    """The daemon ``ctl`` talks to: ``--admin``; else the config ``--config`` or ``$MCP_SUPERVISOR_CONFIG`` names;
    else the daemon running here (its state file); else ``config/supervision.toml``; else the default address.
    The token file: ``--token-file``, ``$MCP_SUPERVISOR_TOKEN_FILE``, else the one that daemon reads."""
    from ..daemon import discovery
    from .ctl import Failed, Target

    token_file = args.token_file or os.environ.get("MCP_SUPERVISOR_TOKEN_FILE")
    running = discovery.running()
    everywhere = discovery.running(everywhere=True)

    def of_daemon(info: discovery.DaemonInfo) -> Target:
        admin = _parsed(info.admin)
        if admin is None:
            raise Failed(f"the running daemon ({info.describe()}) names no address ctl can use: pass --admin ADDR")
        return Target(admin, token_file or info.token_file, f"the running daemon, {info.describe()}", info.pid)

    if args.admin:
        same = next((d for d in everywhere if _parsed(d.admin) == args.admin), None)
        if same is not None:
            return Target(args.admin, token_file or same.token_file, "--admin", same.pid)
        return Target(args.admin, token_file, "--admin")
    config = args.config or os.environ.get("MCP_SUPERVISOR_CONFIG")
    if config:
        running_it = next((d for d in everywhere if d.config == os.path.abspath(config)), None)
        if running_it is not None:
            return of_daemon(running_it)
        try:
            cfg = load_config(config, workers=BUILTIN_WORKERS)
        except ConfigError as e:
            raise Failed(f"invalid config: {e}", exits.CONFIG) from None
        return Target(cfg.daemon.admin, token_file or cfg.daemon.admin_token_file, f"the config {cfg.file}")
    if len(running) == 1:
        return of_daemon(running[0])
    if len(running) > 1:
        listed = "; ".join(d.describe() for d in running)
        raise Failed(f"{len(running)} daemons are running ({listed}): choose one with --admin ADDR or --config FILE")
    if os.path.exists(DEFAULT_CONFIG_PATH):
        try:
            cfg = load_config(DEFAULT_CONFIG_PATH, workers=BUILTIN_WORKERS)
            return Target(cfg.daemon.admin, token_file or cfg.daemon.admin_token_file, f"the config {cfg.file}")
        except ConfigError:
            pass  # not the running daemon's config anyway: try the default address
    return Target(Address.parse(DEFAULT_ADMIN), token_file, "the default address (no running daemon was found)")


def _address(text: str) -> Address:
    """``--admin``: parsed where it enters; argparse prints the message and exits 2."""
    try:
        return Address.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parsed(text: str) -> Address | None:
    """A state file's address (None if it is not one: that file is not a daemon's we can reach)."""
    try:
        return Address.parse(text)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
