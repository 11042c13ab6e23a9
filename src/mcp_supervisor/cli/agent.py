"""``mcp-supervisor mcp``: a Model Context Protocol server over stdio for operators' agents. It talks to a running
daemon through its admin port, as ``ctl`` does, and answers in ``ctl``'s words: the tree, a child's exits and
diagnosis, output, events, health, the fleet, the running config (secrets masked), and a proposed config's verdict.

Read-only by default. The mutating tools — restart, stop, start, signal, scale, reload — exist only when the
daemon's config lists them in ``[daemon.mcp] allow``; each is annotated destructive, needs the admin token (the
daemon checks it, and audits the call like any other), and takes ``dry_run`` to say what it would do. Results are
bounded (output truncated with a note) and every call to the daemon has a timeout. Built on the official ``mcp``
SDK (the ``[mcp]`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import io
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations

from .. import __version__
from ..config import ConfigError, load_config, parse_config
from ..config.model import DEFAULT_CONFIG_PATH
from ..config.redact import Redactor
from ..core import Address
from ..daemon import exits
from . import ctl
from .ctl import Admin, Failed, Refused, Target

MAX_TEXT = 64 * 1024  # characters of one result
MAX_LINES = 2000  # output lines or events one call may ask for
TIMEOUT = 30.0  # seconds for one call to the daemon

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
MUTATE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)


def bounded(text: str, what: str = "output") -> str:
    """``text`` cut to :data:`MAX_TEXT` characters (its end kept: the newest lines), with a note when cut."""
    if len(text) <= MAX_TEXT:
        return text
    cut = text[-MAX_TEXT:]
    cut = cut[cut.find("\n") + 1 :]
    return f"[{what} truncated: the last {len(cut)} of {len(text)} characters]\n{cut}"


class Bridge:
    """The daemon, through its admin port; ``ctl``'s commands run with their output captured."""

    def __init__(self, target: Target, config_path: str | None) -> None:
        self.admin = Admin(target, TIMEOUT)
        self.config_path = config_path
        self.allow = self._policy()
        self._lock = asyncio.Lock()  # mutations one at a time

    def _policy(self) -> tuple[str, ...]:
        if self.config_path is None:
            return ()
        try:
            return load_config(self.config_path).daemon.mcp_allow
        except ConfigError:
            return ()  # an unreadable config allows nothing

    async def run(self, command: Callable[..., Awaitable[int]], **fields: Any) -> str:
        """A ``ctl`` command's words; a failure is a ToolError with ``ctl``'s message."""
        out, err = io.StringIO(), io.StringIO()
        args = argparse.Namespace(json=False, **fields)
        try:
            with contextlib.redirect_stderr(err):
                async with asyncio.timeout(TIMEOUT):
                    code = await command(self.admin, args, out)
        except (Failed, Refused) as e:
            raise ToolError(_refusal(e)) from None
        except TimeoutError:
            raise ToolError(f"the daemon did not answer within {TIMEOUT:g} s") from None
        except OSError as e:
            raise ToolError(f"cannot reach the daemon at {self.admin.address}: {e.strerror or e}") from None
        text = (out.getvalue() + err.getvalue()).rstrip()
        if code != 0:
            raise ToolError(bounded(text) or f"failed (exit {code})")
        return bounded(text)

    def allowed(self, action: str) -> None:
        if action not in self.allow:  # the tool is not even listed then; this guards a stale client too
            raise ToolError(f"{action} is not allowed: list it in the daemon's config, [daemon.mcp] allow")

    async def mutate(self, tool: str, command: Callable[..., Awaitable[int]], **fields: Any) -> str:
        """A mutation: allowed by the config, and with the admin token (never a token-less SIGHUP)."""
        self.allowed(tool)
        try:
            self.admin.token()
        except Failed as e:
            raise ToolError(str(e)) from None
        async with self._lock:
            return await self.run(command, **fields)

    async def get(self, url: str) -> Any:
        try:
            async with asyncio.timeout(TIMEOUT):
                return await self.admin.get_json(url)
        except Refused as e:
            raise ToolError(_refusal(e)) from None
        except (OSError, TimeoutError) as e:
            raise ToolError(f"cannot reach the daemon at {self.admin.address}: {e}") from None

    def running_config(self) -> str:
        if self.config_path is None:
            raise ToolError("the daemon's config file is not known here (start this server with --config)")
        try:
            text = open(self.config_path, encoding="utf-8").read()
            cfg = load_config(self.config_path)
        except (OSError, ConfigError) as e:
            raise ToolError(f"cannot read {self.config_path}: {e}") from None
        return Redactor(cfg.secrets).redact(text)


def _refusal(e: Exception) -> str:
    if isinstance(e, Refused) and e.status in (401, 403):
        return (f"refused by the daemon ({e.status}): {e} — the admin token is missing or wrong (give this server "
                "--token-file, or run it where the daemon's token file is readable)")  # fmt: skip
    return str(e)


def _path(path: str) -> str:
    return quote(path.strip("/"), safe="/")


def build(bridge: Bridge) -> MCPServer:  # noqa: C901, PLR0915 - one definition per tool and resource
    allowed = ", ".join(bridge.allow) or "none"
    server = MCPServer(
        name="mcp-supervisor",
        version=__version__,
        instructions=(
            "Observe and, where allowed, operate an mcp-supervisor daemon (Erlang/OTP-style supervision trees for "
            "Linux services). Start with `status`; `why PATH` explains how a child ended (crash loops, OOM kills, "
            f"start failures) and shows its last output. Mutations allowed here: {allowed} (the operator lists them "
            "in [daemon.mcp] allow); each takes dry_run=true to say what it would do."
        ),
    )

    # -- reads -------------------------------------------------------------------------------------------------
    @server.tool(annotations=READ)
    async def status() -> str:
        """The supervision tree: every child with its state, pid, restarts, uptime, memory and CPU, its last exit."""
        return await bridge.run(ctl.status, watch=False)

    @server.tool(annotations=READ)
    async def why(path: str) -> str:
        """Why the child at PATH (e.g. "web", "edge/proxy", "web#2") ended: a diagnosis, its crash-loop episode, its
        last 20 ends with their causes (crash, oom-kill, start-failure, liveness, killed, ...), and the last output
        of the last failed run."""
        return await bridge.run(ctl.why, path=path)

    @server.tool(annotations=READ)
    async def logs(path: str, lines: int = 100, grep: str | None = None) -> str:
        """The child's recent output (stdout, stderr, its own log lines), oldest first; a supervisor's path merges its
        children's. ``grep``: only lines matching this regular expression (case-insensitive)."""
        if not 1 <= lines <= MAX_LINES:
            raise ToolError(f"lines: 1..{MAX_LINES}, got {lines}")
        pattern = None
        if grep:
            try:
                pattern = re.compile(grep, re.IGNORECASE)
            except re.error as e:
                raise ToolError(f"grep: not a regular expression ({e})") from None
        text = await bridge.run(ctl.logs, path=path, lines=lines if pattern is None else MAX_LINES, follow=False)
        if pattern is not None:
            kept = [line for line in text.splitlines() if pattern.search(line)][-lines:]
            text = "\n".join(kept) if kept else f"no line of the last {MAX_LINES} matches {grep!r}"
        return bounded(text, "logs")

    @server.tool(annotations=READ)
    async def events(limit: int = 50, type: str | None = None, path: str | None = None) -> str:
        """Recent events, oldest first: starts, exits with their causes, restarts, crash loops, reloads, health
        changes. ``type``: only this event type (ChildExited, CrashLoopStarted, ReloadResult, ...); ``path``: only
        this child and below."""
        if not 1 <= limit <= MAX_LINES:
            raise ToolError(f"limit: 1..{MAX_LINES}, got {limit}")
        return await bridge.run(ctl.events, lines=limit, follow=False, path=[path] if path else [],
                                type=[type] if type else [], all=bool(type))  # fmt: skip

    @server.tool(annotations=READ)
    async def health() -> str:
        """Run a health round now (reads only) and say each check's result: pass, warn or fail."""
        try:
            return await bridge.run(ctl.health)
        except ToolError as e:  # `ctl health` exits 1 on a failing round: that is an answer, not an error
            return str(e)

    @server.tool(annotations=READ)
    async def check_config(text: str) -> str:
        """Validate a proposed supervision.toml (its whole text) without applying it: "valid" and what it holds, or
        the error with its line and key. Nothing is written, nothing changes."""
        if len(text) > 4 * 2**20:
            raise ToolError("the text is larger than 4 MiB")
        try:
            cfg = parse_config(text, "proposed.toml")
        except ConfigError as e:
            return f"invalid: {e}"
        return f"valid: {len(cfg.entries) - 1} children; admin {cfg.daemon.admin}"

    # -- resources ---------------------------------------------------------------------------------------------
    @server.resource("supervisor://tree", mime_type="text/plain")
    async def tree() -> str:
        """The supervision tree, as `ctl status` shows it."""
        return await bridge.run(ctl.status, watch=False)

    @server.resource("supervisor://children/{path}", mime_type="text/plain")
    async def child(path: str) -> str:
        """One child (its path; a nested one's `/` as %2F): its state, exits, crash-loop episode and resources."""
        return await bridge.run(ctl.why, path=path)

    @server.resource("supervisor://logs/{path}", mime_type="text/plain")
    async def output(path: str) -> str:
        """The last 200 lines of a child's output."""
        return bounded(await bridge.run(ctl.logs, path=path, lines=200, follow=False), "logs")

    @server.resource("supervisor://events", mime_type="text/plain")
    async def recent_events() -> str:
        """The last 100 events."""
        return await bridge.run(ctl.events, lines=100, follow=False, path=[], type=[], all=False)

    @server.resource("supervisor://health", mime_type="application/json")
    async def health_doc() -> dict[str, Any]:
        """The health document (application/health+json)."""
        return dict(await bridge.get("/health"))

    @server.resource("supervisor://cluster", mime_type="application/json")
    async def cluster() -> dict[str, Any]:
        """The fleet as this node last read it (fleet mode only)."""
        return dict(await bridge.get("/cluster"))

    @server.resource("supervisor://config", mime_type="application/toml")
    async def config() -> str:
        """The daemon's config file, every secret in it masked."""
        return bridge.running_config()

    # -- mutations: only those the config allows ---------------------------------------------------------------
    for action, text in _ACTS.items():
        if action in bridge.allow:
            server.tool(name=action, description=text, annotations=MUTATE)(_acting(bridge, action))

    if "signal" in bridge.allow:

        @server.tool(annotations=MUTATE)
        async def signal(path: str, signal: str, group: bool = False, dry_run: bool = False) -> str:
            """Send a signal (HUP, USR1, TERM, a number) to an OS child's process, or its whole process group."""
            if dry_run:
                node = await _node(bridge, path)
                return f"would send {signal} to {path} (pid {node.get('pid')}{', its group' if group else ''})"
            return await bridge.mutate("signal", ctl.send_signal, path=path, signal=signal, group=group)

    if "scale" in bridge.allow:

        @server.tool(annotations=MUTATE)
        async def scale(path: str, instances: int, dry_run: bool = False) -> str:
            """Run N instances of a child that has `instances` (until the next reload applies the file's)."""
            if dry_run:
                doc = await bridge.get("/status")
                now = [n["path"] for n in ctl.nodes(doc) if n["path"].split("#")[0] == path.strip("/")]
                return f"would run {instances} instance(s) of {path} (now {len(now)})"
            return await bridge.mutate("scale", ctl.scale, path=path, instances=instances)

    if "reload" in bridge.allow:

        @server.tool(annotations=MUTATE)
        async def reload(dry_run: bool = False) -> str:
            """Re-read the daemon's config file and apply the difference (an invalid file is refused, nothing
            changes). dry_run: check the file only."""
            if dry_run:
                if bridge.config_path is None:
                    raise ToolError("the config file is not known here (start this server with --config)")
                try:
                    load_config(bridge.config_path, host_checks=True)
                except ConfigError as e:
                    return f"a reload would be refused: {e}"
                return f"{bridge.config_path} is valid: a reload would apply it"
            return await bridge.mutate("reload", ctl.reload, wait=True)

    return server


_ACTS = {
    "restart": 'Restart children: paths ("web", "edge/proxy"), globs ("web#*", "edge/*") or "all".',
    "stop": 'Stop children (they stay stopped until started): paths, globs or "all".',
    "start": 'Start stopped children: paths, globs or "all".',
}


def _acting(bridge: Bridge, action: str) -> Callable[[list[str], bool], Awaitable[str]]:
    """The tool for ``action`` (restart, stop or start)."""

    async def tool(paths: list[str], dry_run: bool = False) -> str:
        return await _act(bridge, action, paths, dry_run)

    return tool


async def _node(bridge: Bridge, path: str) -> dict[str, Any]:
    doc = await bridge.get("/status")
    try:
        (node,) = ctl.select(doc, [path])
    except Failed as e:
        raise ToolError(str(e)) from None
    except ValueError:
        raise ToolError(f"{path!r} names more than one child") from None
    return node


async def _act(bridge: Bridge, action: str, paths: list[str], dry_run: bool) -> str:
    bridge.allowed(action)
    if not paths:
        raise ToolError('paths: at least one path, glob or "all"')
    if dry_run:
        try:
            chosen = ctl.select(await bridge.get("/status"), paths)
        except Failed as e:
            raise ToolError(str(e)) from None
        lines = [f"would {action} {n['path']} ({n['state']}{', pid ' + str(n['pid']) if n.get('pid') else ''})"
                 for n in chosen]  # fmt: skip
        return "\n".join(lines)
    return await bridge.mutate(action, ctl.act, paths=paths, action=action, rolling=False)


def config_of(args: argparse.Namespace, target: Target) -> str | None:
    """The daemon's config file: --config, $MCP_SUPERVISOR_CONFIG, the running daemon's, the default if present."""
    from ..daemon import discovery

    chosen = args.config or os.environ.get("MCP_SUPERVISOR_CONFIG")
    if chosen:
        return str(chosen)
    for info in discovery.running(everywhere=True):
        if info.pid == target.pid and info.config:
            return str(info.config)
    return DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None


def serve(args: argparse.Namespace, target: Target) -> int:
    bridge = Bridge(target, config_of(args, target))
    server = build(bridge)
    if not args.http:
        server.run("stdio")
        return 0
    try:
        listen = Address.tcp(args.http)
    except ValueError as e:
        raise Failed(f"--http: {e}", exits.USAGE) from None
    if not listen.loopback:
        raise Failed(f"--http {listen}: the MCP endpoint listens on loopback only (put a TLS proxy in front of it "
                     "for more)", exits.USAGE)  # fmt: skip
    token = bridge.admin.token()  # Failed (exit 4) without one: the endpoint is never open
    security = TransportSecuritySettings(
        allowed_hosts=sorted(listen.allowed_hosts() or ()),
        allowed_origins=[f"http://{h}" for h in sorted(listen.allowed_hosts() or ())],
    )
    app = BearerGuard(server.streamable_http_app(transport_security=security, host=listen.host), token)
    print(f"mcp: serving {bridge.admin.address} as MCP (Streamable HTTP) at http://{listen}/mcp; every request needs "
          "the admin token as a bearer token", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=listen.host, port=listen.port, log_level="warning", lifespan="on")
    return 0


class BearerGuard:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <the admin token>`` (compared in constant
    time); a missing or wrong one gets 401 before the MCP app sees it."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self._token):
                body = json.dumps({"error": "this endpoint needs the admin token: Authorization: Bearer <token>",
                                   "status": 401}).encode()  # fmt: skip
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                        (b"content-length", str(len(body)).encode())]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
