"""``mcp-supervisor ctl``: a running daemon's admin port from the command line.

``status`` (``--watch`` redraws on every event), ``logs PATH [-n N] [-f]`` (like ``supervisorctl tail -f``),
``events [-f] [--path P]``, ``restart|stop|start PATH``, ``reload [--wait]``, ``health``. Colour only on a terminal
(and never with ``NO_COLOR``); a follow reconnects with ``Last-Event-ID`` when the daemon restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from .core import describe

EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78

_STATE_COLOUR = {"running": "32", "starting": "33", "restarting": "33;1", "stopping": "33", "stopped": "31;1"}
_EVENT_COLOUR = {"ChildExited": "31", "StartFailed": "31", "IntensityExceeded": "31;1", "ChildStarted": "32"}
_STREAM_COLOUR = {"stdout": "36", "stderr": "31", "error": "31", "warning": "33", "critical": "31;1"}


def colour_on(out: TextIO) -> bool:
    return hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")


def paint(text: str, code: str | None, on: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if on and code else text


class Admin:
    """One daemon's admin port: plain requests and Server-Sent Event streams."""

    def __init__(self, address: str, token: str | None, timeout: float) -> None:
        self.address = address
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.base = "http://localhost" if address.startswith("unix:") else f"http://{address}"

    def session(self, total: float | None) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=self.address[5:]) if self.address.startswith("unix:") else aiohttp.TCPConnector()
        )
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=total, connect=self.timeout)
        )

    async def request(self, method: str, url: str, accept: str = "application/json") -> tuple[int, str]:
        async with (
            self.session(self.timeout) as session,
            session.request(method, self.base + url, headers={**self.headers, "Accept": accept}) as resp,
        ):
            return resp.status, await resp.text()

    async def follow(self, url: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event name, data) of an SSE stream, reconnecting (with Last-Event-ID) until cancelled."""
        last: str | None = None
        delay = 0.2
        while True:
            headers = {**self.headers, "Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                async with self.session(None) as session, session.get(self.base + url, headers=headers) as resp:
                    if resp.status >= 400:
                        raise _Refused(resp.status, await resp.text())
                    delay = 0.2
                    name, data = "message", ""
                    async for raw in resp.content:
                        line = raw.decode("utf-8", "replace").rstrip("\r\n")
                        if not line:
                            if data:
                                yield name, json.loads(data)
                            name, data = "message", ""
                        elif line.startswith("id:"):
                            last = line[3:].strip()
                        elif line.startswith("event:"):
                            name = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass  # the daemon restarted or the connection dropped: reconnect
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)


class _Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"error {status}: {_error_text(body)}")


def _error_text(body: str) -> str:
    try:
        doc = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


async def ctl(args: argparse.Namespace, address: str, token: str | None) -> int:
    admin = Admin(address, token, args.timeout)
    try:
        if args.action == "logs":
            return await logs(admin, args, sys.stdout)
        if args.action == "events":
            return await events(admin, args, sys.stdout)
        if args.action == "status" and args.watch:
            return await watch(admin, sys.stdout)
        return await simple(admin, args)
    except _Refused as e:
        print(str(e), file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        print(f"cannot reach the daemon at {address}: {describe(e)}", file=sys.stderr)
        return EXIT_UNAVAILABLE


async def simple(admin: Admin, args: argparse.Namespace) -> int:
    method, url = "GET", "/status"
    if args.action in ("restart", "stop", "start"):
        method, url = "POST", f"/children/{quote(args.path.strip('/'), safe='/')}/{args.action}"
        if args.action == "restart" and args.rolling:
            url += "?rolling=1"
    elif args.action == "cluster" and args.cluster_action == "status":
        url = "/cluster"
    elif args.action == "cluster":
        query = f"path={quote(args.path.strip('/'), safe='')}&node={quote(args.node, safe='')}"
        method, url = "POST", f"/cluster/move?{query}"
    elif args.action == "scale":
        method, url = "POST", f"/children/{quote(args.path.strip('/'), safe='/')}/scale?instances={args.instances}"
    elif args.action == "reload":
        method, url = "POST", f"/reload?wait={'1' if args.wait else '0'}"
    elif args.action == "health":
        method, url = "POST", "/health/check"
    status, text = await admin.request(method, url)
    try:
        body: Any = json.loads(text)
    except json.JSONDecodeError:
        body = text
    if status == 409 and isinstance(body, dict) and body.get("rolling"):
        print(f"rolling restart stopped at {body['failed']}: {body['error']}", file=sys.stderr)
        print(f"replaced: {', '.join(body['replaced']) or 'none'}; untouched: {', '.join(body['untouched']) or 'none'}")
        return 1
    if status >= 400:
        print(f"error {status}: {_error_text(text)}", file=sys.stderr)
        return EXIT_CONFIG if args.action == "reload" and status == 422 else 1
    if args.action == "status" and not args.json:
        print(render_tree(body, colour_on(sys.stdout)))
    elif args.action == "cluster" and args.cluster_action == "status" and not args.json:
        print(render_cluster(body))
    elif args.action == "reload" and isinstance(body, dict) and "changes" in body:
        changes = body["changes"] or [{"path": "-", "change": "nothing changed"}]
        for c in changes:
            print(f"{c['path'] or '/'}: {c['change']}")
    else:
        print(json.dumps(body, indent=2))
    return 0


def render_cluster(view: dict[str, Any]) -> str:
    """``ctl cluster status``: one line per node and per singleton."""
    now = time.time()
    lines = [f"node {view['node']}: " + ("connected" if view.get("connected") else f"database: {view.get('error')}")]
    for n in view.get("nodes", []):
        state, st = ("live" if n.get("live") else "down"), n["status"]
        ago = max(0.0, now - n["heartbeat_at"])
        running = f"{st.get('running', '?')}/{st.get('children', '?')} running"
        lines.append(f"  {n['node']:<20} {state:<5} heartbeat {ago:.1f}s ago  {running}  {n['admin']}")
    for single in view.get("singletons", []):
        holder = single.get("holder") or "nobody"
        lines.append(f"  {single['path']:<20} held by {holder} (token {single['token']}, "
                     f"since {max(0.0, now - single['since']):.0f}s)"
                     + (f", moving to {single['wanted']}" if single.get("wanted") else ""))  # fmt: skip
    return "\n".join(lines)


# -- logs ------------------------------------------------------------------------------------------------------
def format_line(path: str, line: dict[str, Any], colour: bool) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(line["at"]))
    pid = f"[{line['pid']}]" if line.get("pid") else ""
    prefix = paint(f"{path} {line['stream']}{pid}", _STREAM_COLOUR.get(line["stream"]), colour)
    return f"{stamp} {prefix} {line['text']}"


async def logs(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    path = args.path.strip("/")
    colour = colour_on(out)
    url = f"/children/{path}/logs?lines={max(0, args.lines)}"
    if not args.follow:
        status, text = await admin.request("GET", url, accept="application/x-ndjson")
        if status >= 400:
            raise _Refused(status, text)
        for raw in text.splitlines():
            print(format_line(path, json.loads(raw), colour), file=out, flush=True)
        return 0
    async for name, data in admin.follow(url + "&follow=1"):
        if name == "gap":
            print(paint(f"... {data['missed']} line(s) missed", "2", colour), file=out, flush=True)
        elif name == "line":
            print(format_line(path, data, colour), file=out, flush=True)
    return 0


# -- events ----------------------------------------------------------------------------------------------------
def format_event(ev: dict[str, Any], colour: bool) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("at", 0)))
    kind = ev.get("type", "?")
    skip = {"type", "at", "path", "id"}
    fields = " ".join(f"{k}={_short(v)}" for k, v in ev.items() if k not in skip)
    code = (
        "31"
        if kind in ("ChildExited", "StartFailed", "IntensityExceeded")
        else "32"
        if kind == "ChildStarted"
        else None
    )
    return f"{stamp} {paint(kind, code, colour)} {ev.get('path') or '/'} {fields}".rstrip()


def _short(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"kind", "detail"}:
        return f"{value['kind']}" + (f"({value['detail']})" if value["detail"] else "")
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


async def events(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    colour = colour_on(out)
    query = "".join(f"&path={p.strip('/')}" for p in args.path)
    status, text = await admin.request("GET", f"/events?limit={max(0, args.lines)}{query}")
    if status >= 400:
        raise _Refused(status, text)
    last = None
    for raw in text.splitlines():
        doc = json.loads(raw)
        last = doc["id"]
        print(format_event(doc, colour), file=out, flush=True)
    if not args.follow:
        return 0
    since = f"&last_event_id={last}" if last is not None else ""  # then everything after what was printed
    async for name, data in admin.follow(f"/events?follow=1{query}{since}"):
        if name == "gap":
            print(paint(f"... {data['missed']} event(s) missed", "2", colour), file=out, flush=True)
        else:
            print(format_event(data, colour), file=out, flush=True)
    return 0


# -- status ----------------------------------------------------------------------------------------------------
async def watch(admin: Admin, out: TextIO) -> int:
    colour = colour_on(out)

    async def draw() -> None:
        status, text = await admin.request("GET", "/status")
        if status >= 400:
            raise _Refused(status, text)
        screen = render_tree(json.loads(text), colour)
        if colour:
            out.write("\x1b[H\x1b[2J")  # home, clear: redraw in place on a terminal
        out.write(f"{screen}\n{time.strftime('%H:%M:%S')}  (Ctrl-C to stop)\n")
        out.flush()

    await draw()
    async for name, data in admin.follow("/events?follow=1"):
        if name == "gap" or data.get("type") != "ProcessOutput":
            await draw()
    return 0


def _uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def render_tree(doc: dict[str, Any], colour: bool = False) -> str:
    """The tree, indented, one line per node; states coloured when ``colour``."""
    lines: list[str] = []

    def describe_node(node: dict[str, Any]) -> str:
        state = paint(node["state"], _STATE_COLOUR.get(node["state"]), colour)
        parts = [node["id"] or "/", node["kind"], state]
        if node["kind"] == "supervisor":
            parts.insert(2, node.get("strategy", ""))
        if node.get("pid"):
            parts.append(f"pid {node['pid']}")
        parts.append(f"restarts {node['restarts']}")
        if node["state"] == "running":
            parts.append(f"up {_uptime(node['uptime_s'])}")
        if node.get("next_restart_at"):
            parts.append(f"next try in {max(0.0, node['next_restart_at'] - time.time()):.1f}s")
        if node.get("last_exit") and node["state"] != "running":
            parts.append(f"last exit {node['last_exit']['reason']}: {node['last_exit']['detail']}".rstrip(": "))
        return "  ".join(p for p in parts if p)

    def walk(node: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        lines.append(prefix + branch + describe_node(node))
        kids = node.get("children", [])
        deeper = prefix + ("" if root else ("    " if last else "│   "))
        for i, child in enumerate(kids):
            walk(child, deeper, i == len(kids) - 1, False)

    walk(doc, "", True, True)
    return "\n".join(lines)
