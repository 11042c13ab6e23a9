"""``mcp-supervisor ctl``: a running daemon's admin port from the command line, for people and for programs.

Every command prints a short human answer (``--json``: the port's documents) and exits with a documented code:
0 done, 1 the action or check failed, 2 usage error, 3 the daemon could not be reached, 4 unauthorized, 78 the
config is invalid. ``restart|stop|start`` take paths, glob patterns over paths (``web#*``, ``edge/*``; ``*`` stays
within one level) or ``all`` (every worker and process). Colour only on a terminal (and never with ``NO_COLOR``);
a follow reconnects with ``Last-Event-ID`` when the daemon restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from ..core import Address, describe
from ..daemon import exits

NOISE = ("ProcessOutput", "ServiceOperation", "ServiceState", "HealthRound")
"""Event types ``ctl events`` hides unless asked (``--type``, ``--all``): output lines (``ctl logs`` shows them) and
the services' per-operation telemetry."""

_STATE_COLOUR = {"running": "32", "starting": "33", "restarting": "33;1", "stopping": "33", "stopped": "31;1"}
_STREAM_COLOUR = {"stdout": "36", "stderr": "31", "error": "31", "warning": "33", "critical": "31;1"}
_EVENT_COLOUR = {"ChildExited": "31", "StartFailed": "31", "IntensityExceeded": "31;1", "ChildStarted": "32"}


def colour_on(out: TextIO) -> bool:
    return hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")


def paint(text: str, code: str | None, on: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if on and code else text


@dataclass(frozen=True, slots=True)
class Target:
    """The daemon to talk to, and how it was found (for messages)."""

    admin: Address
    token_file: str | None
    found: str  # "--admin", "the config file x", "the running daemon (pid N)", "the default address"
    pid: int | None = None  # the daemon's, when its state file was found (a reload can then be a SIGHUP)


class Failed(Exception):
    """A command failed: the message (what happened, what to do) and the exit code."""

    def __init__(self, message: str, code: int = exits.FAILED) -> None:
        self.code = code
        super().__init__(message)


class Admin:
    """One daemon's admin port: plain requests and Server-Sent Event streams."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.address = target.admin
        self.timeout = timeout
        self.base = self.address.url()
        self._token: str | None = None

    def token(self) -> str:
        """The admin token, read when a command first needs it (reads work without it)."""
        if self._token is None:
            path = self.target.token_file
            if not path:
                raise Failed(
                    f"this command needs the admin token, and no token file is known for the daemon at "
                    f"{self.address} ({self.target.found}): pass --token-file FILE (the file named by "
                    "daemon.admin_token_file in its config)",
                    exits.UNAUTHORIZED,
                )
            try:
                with open(path, encoding="utf-8") as f:
                    self._token = f.read().strip()
            except OSError as e:
                raise Failed(
                    f"cannot read the admin token file {path}: {e.strerror or e}; run ctl as a user who can read it "
                    "(e.g. with sudo), or pass --token-file FILE",
                    exits.UNAUTHORIZED,
                ) from None
        return self._token

    def session(self, total: float | None) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=self.address.path) if self.address.unix else aiohttp.TCPConnector()
        )
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=total, connect=self.timeout)
        )

    async def request(self, method: str, url: str, accept: str = "application/json") -> tuple[int, str]:
        headers = {"Accept": accept}
        if method == "POST":
            headers["Authorization"] = f"Bearer {self.token()}"
        async with (
            self.session(self.timeout) as session,
            session.request(method, self.base + url, headers=headers) as resp,
        ):
            return resp.status, await resp.text()

    async def get_json(self, url: str) -> Any:
        status, text = await self.request("GET", url)
        if status >= 400:
            raise Refused(status, text)
        return json.loads(text)

    async def follow(self, url: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event name, data) of an SSE stream, reconnecting (with Last-Event-ID) until cancelled."""
        last: str | None = None
        delay = 0.2
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                async with self.session(None) as session, session.get(self.base + url, headers=headers) as resp:
                    if resp.status >= 400:
                        raise Refused(resp.status, await resp.text())
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
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # Ctrl-C landed in a connect that turned it into an error
                    raise asyncio.CancelledError from None
                # else the daemon restarted or the connection dropped: reconnect
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)  # a restarted daemon is followed again within a second


class Refused(Exception):
    """The port answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(error_text(body))


def error_text(body: str) -> str:
    try:
        doc = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


def exit_code_for(status: int) -> int:
    return exits.UNAUTHORIZED if status in (401, 403) else exits.CONFIG if status == 422 else exits.FAILED


async def ctl(args: argparse.Namespace, target: Target) -> int:
    admin = Admin(target, args.timeout)
    out = sys.stdout
    try:
        handler = COMMANDS[args.action]
        return await handler(admin, args, out)
    except Failed as e:
        print(f"ctl: {e}", file=sys.stderr)
        return e.code
    except Refused as e:
        print(f"ctl: {e}", file=sys.stderr)
        return exit_code_for(e.status)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        print(
            f"ctl: cannot reach the daemon at {target.admin} ({target.found}): {describe(e)}. Is it running? "
            "Start it with `mcp-supervisor run`, or point ctl at it with --admin ADDR or --config FILE.",
            file=sys.stderr,
        )
        return exits.UNREACHABLE


# -- status ------------------------------------------------------------------------------------------------------
async def status(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    if args.watch:
        return await watch(admin, out)
    doc = await admin.get_json("/status")
    print(json.dumps(doc, indent=2) if args.json else render_tree(doc, colour_on(out)), file=out)
    return exits.OK


async def watch(admin: Admin, out: TextIO) -> int:
    colour = colour_on(out)

    async def draw() -> None:
        screen = render_tree(await admin.get_json("/status"), colour)
        if colour:
            out.write("\x1b[H\x1b[2J")  # home, clear: redraw in place on a terminal
        out.write(f"{screen}\n{time.strftime('%H:%M:%S')}  (Ctrl-C to stop)\n")
        out.flush()

    await draw()
    async for name, data in admin.follow("/events?follow=1&" + "&".join(f"exclude_type={t}" for t in NOISE)):
        if name == "gap" or data.get("type") not in NOISE:
            await draw()
    return exits.OK


def _uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


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
        res = node.get("resources")
        if res:
            parts.append(f"cpu {res['cpu_s']:.1f}s  mem {_bytes(res['rss_bytes'])}")
        loop = node.get("crash_loop")
        if loop:
            parts.append(paint(f"CRASH-LOOPING ({loop['cause']} x{loop['count']})", "31;1", colour))
        if node.get("next_restart_at"):
            parts.append(f"next try in {max(0.0, node['next_restart_at'] - time.time()):.1f}s")
        last = node.get("last_exit")
        if last and node["state"] != "running":
            cause = f" ({last['cause']})" if last.get("cause") else ""
            parts.append(f"last exit {last['reason']}{cause}: {last['detail']}".rstrip(": "))
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


def nodes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node below the root, in tree order."""
    out: list[dict[str, Any]] = []
    stack = list(reversed(doc.get("children", [])))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.get("children", [])))
    return out


def matches(pattern: str, path: str) -> bool:
    """A glob over paths, one level per ``/``: ``edge/*`` is edge's children, ``web#*`` web's instances."""
    want, have = pattern.strip("/").split("/"), path.split("/")
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w) for w, h in zip(want, have, strict=True))


def select(doc: dict[str, Any], targets: list[str]) -> list[dict[str, Any]]:
    """The nodes ``targets`` name, in tree order, each once; Failed names a target that matches nothing."""
    every = nodes(doc)
    chosen: dict[str, dict[str, Any]] = {}
    for target in targets:
        if target == "all":
            found = [n for n in every if n["kind"] != "supervisor"]
        elif any(c in target for c in "*?["):
            found = [n for n in every if matches(target, n["path"])]
        else:
            found = [n for n in every if n["path"] == target.strip("/")]
        if not found:
            known = ", ".join(n["path"] for n in every[:12]) + (", ..." if len(every) > 12 else "")
            kind = "pattern" if target == "all" or any(c in target for c in "*?[") else "path"
            raise Failed(f"no child matches the {kind} {target!r} (the tree has: {known or 'no children'}); "
                         "see `ctl status`")  # fmt: skip
        for n in found:
            chosen.setdefault(n["path"], n)
    order = {n["path"]: i for i, n in enumerate(every)}
    return sorted(chosen.values(), key=lambda n: order[n["path"]])


# -- restart / stop / start --------------------------------------------------------------------------------------
_DONE = {"restart": "restarted", "stop": "stopped", "start": "started"}


async def act(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:  # noqa: C901, PLR0912 - one table of actions and outcomes, printed for people and for --json
    action: str = args.action
    if args.rolling:
        return await rolling(admin, args, out)
    plain = [t for t in args.paths if t != "all" and not any(c in t for c in "*?[")]
    if len(plain) == len(args.paths) == 1:  # one exact path: no need to read the tree first
        chosen = [{"path": plain[0].strip("/"), "state": None, "pid": None, "kind": None}]
    else:
        chosen = select(await admin.get_json("/status"), args.paths)
        if action == "stop":
            chosen.reverse()  # as a shutdown: the last started first
    results: list[dict[str, Any]] = []
    failed = 0
    for node in chosen:
        path = node["path"]
        if node["state"] is not None and _already(action, node):  # a pattern's members already as wanted
            results.append({"path": path, "action": action, "skipped": f"already {node['state']}"})
            if not args.json:
                print(f"{path}: already {node['state']}", file=out)
            continue
        status, text = await admin.request("POST", f"/children/{quote(path, safe='/')}/{action}")
        doc = _doc(text)
        results.append(doc if isinstance(doc, dict) else {"path": path, "error": text})
        if status in (401, 403):
            raise Refused(status, text)
        if status >= 400:
            message = error_text(text)
            if status == 409 and action == "start" and "is running" in message:
                if not args.json:
                    print(f"{path}: already running", file=out)
                continue
            failed += 1
            if not args.json:
                print(f"{path}: not {_DONE[action]}: {message}", file=sys.stderr)
            continue
        if not args.json:
            print(f"{path}: {_DONE[action]}{_pids(action, doc)}", file=out)
    if args.json:
        print(json.dumps(results if len(results) != 1 else results[0], indent=2), file=out)
    return exits.FAILED if failed else exits.OK


def _already(action: str, node: dict[str, Any]) -> bool:
    return (action == "start" and node["state"] == "running") or (action == "stop" and node["state"] == "stopped")


def _pids(action: str, doc: dict[str, Any]) -> str:
    before, child = doc.get("previous_pid"), doc.get("child") or {}
    after = child.get("pid")
    if action == "restart" and before and after:
        return f" (pid {before} → {after})"
    if action == "start" and after:
        return f" (pid {after})"
    if action == "stop" and before:
        return f" (was pid {before})"
    return ""


def _doc(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


async def rolling(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    if args.action != "restart" or len(args.paths) != 1:
        raise Failed("--rolling takes one replicated child's path, with restart", exits.USAGE)
    path = args.paths[0].strip("/")
    status, text = await admin.request("POST", f"/children/{quote(path, safe='/')}/restart?rolling=1")
    doc = _doc(text)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    if status in (401, 403) or (status >= 400 and not (isinstance(doc, dict) and doc.get("rolling"))):
        raise Refused(status, text)
    replaced = ", ".join(doc["replaced"]) or "none"
    if status == 409:
        if not args.json:
            print(f"{path}: rolling restart stopped at {doc['failed']}: {doc['error']}", file=sys.stderr)
            print(f"replaced: {replaced}; untouched: {', '.join(doc['untouched']) or 'none'}", file=out)
        return exits.FAILED
    if not args.json:
        print(f"{path}: rolling restart done ({len(doc['replaced'])} replaced: {replaced})", file=out)
    return exits.OK


async def send_signal(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    chosen = select(await admin.get_json("/status"), [args.path])
    failed = 0
    for node in chosen:
        query = f"signal={quote(args.signal)}" + ("&group=1" if args.group else "")
        status, text = await admin.request("POST", f"/children/{quote(node['path'], safe='/')}/signal?{query}")
        if status in (401, 403) or status == 400:
            raise Refused(status, text)
        if status >= 400:
            failed += 1
            print(f"{node['path']}: not signalled: {error_text(text)}", file=sys.stderr)
            continue
        doc = json.loads(text)
        if args.json:
            print(text, file=out)
        else:
            whom = f"process group {doc['pid']}" if doc["group"] else f"pid {doc['pid']}"
            print(f"{doc['path']}: sent {doc['signal']} to {whom}", file=out)
    return exits.FAILED if failed else exits.OK


async def scale(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    path = args.path.strip("/")
    status, text = await admin.request("POST", f"/children/{quote(path, safe='/')}/scale?instances={args.instances}")
    if status >= 400:
        raise Refused(status, text)
    doc = json.loads(text)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        started, stopped = ", ".join(doc["started"]) or "none", ", ".join(doc["stopped"]) or "none"
        print(f"{path}: {doc['instances']} instances (started {started}; stopped {stopped})", file=out)
    return exits.OK


# -- reload ------------------------------------------------------------------------------------------------------
async def reload(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    if admin.target.token_file is None and admin.target.pid is not None:
        status, text = await reload_by_signal(admin, admin.target.pid)
    else:
        status, text = await admin.request("POST", f"/reload?wait={'1' if args.wait else '0'}")
    doc = _doc(text)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    if status == 422:
        print(f"reload refused, the running configuration is kept: {error_text(text)}", file=sys.stderr)
        return exits.CONFIG
    if status >= 400:
        raise Refused(status, text)
    if args.json:
        return exits.OK
    if status == 202:
        print("reload: accepted (the config is valid; the difference is being applied)", file=out)
        return exits.OK
    changes = doc.get("changes", [])
    if not changes:
        print("reload: nothing changed", file=out)
        return exits.OK
    counts: dict[str, int] = {}
    for c in changes:
        kind = c["change"].split(":")[0].split(" ")[0]
        counts[kind] = counts.get(kind, 0) + 1
    print("reload: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()), file=out)
    for c in changes:
        print(f"  {c['path'] or '/'}: {c['change']}", file=out)
    return exits.FAILED if any(c["change"].startswith("failed") for c in changes) else exits.OK


async def reload_by_signal(admin: Admin, pid: int) -> tuple[int, str]:
    """Without the token (mutations off, or a systemd ``ExecReload=`` with no credential): SIGHUP the daemon
    (its own user may signal it) and wait for its ``ReloadResult`` event, which reading ``/events`` needs no token
    for. Answers like ``POST /reload?wait=1``."""
    status, text = await admin.request("GET", "/events?limit=1")
    if status >= 400:
        raise Refused(status, text)
    last = json.loads(text.splitlines()[-1])["id"] if text.strip() else "0"
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        raise Failed(f"cannot signal the daemon (pid {pid}): {e.strerror}; pass --token-file FILE to reload over "
                     "its admin port instead", exits.UNAUTHORIZED) from None  # fmt: skip
    async for name, data in admin.follow(f"/events?follow=1&type=ReloadResult&last_event_id={quote(str(last))}"):
        if name == "ReloadResult":
            changes = [{"path": p, "change": c} for p, c in data.get("changes", [])]
            doc = {"ok": data["ok"], "changes": changes, **({} if data["ok"] else {"error": data["error"]})}
            return (200 if data["ok"] else 422), json.dumps(doc)
    raise Failed("the event stream ended before the reload's result")


# -- health ------------------------------------------------------------------------------------------------------
_MARK = {"pass": "✓", "warn": "!", "fail": "✗"}


async def health(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    status, text = await admin.request("POST", "/health/check")
    note = ""
    if status == 404:  # no health monitor: the tree's own view
        status, text = await admin.request("GET", "/health")
        note = " (no health monitor: from the tree's state)"
    if status in (401, 403) or (status >= 400 and status != 503):
        raise Refused(status, text)
    doc = json.loads(text)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(render_health(doc, colour_on(out), note), file=out)
    return exits.FAILED if doc.get("status") == "fail" else exits.OK


def render_health(doc: dict[str, Any], colour: bool = False, note: str = "") -> str:
    overall = doc.get("status", "?")
    code = {"pass": "32", "warn": "33", "fail": "31;1"}.get(overall)
    lines = [f"health: {paint(overall, code, colour)}{note}"]
    rows: list[tuple[str, str, str, str]] = []
    for name, results in (doc.get("checks") or {}).items():
        for r in results:
            who = f"{name} {r['componentId']}" if r.get("componentId") and r["componentId"] not in name else name
            value = r.get("observedValue", "")
            unit = r.get("observedUnit", "")
            shown = f"{round(value, 1) if isinstance(value, float) else value}{' ' + unit if unit else ''}"
            rows.append((_MARK.get(r.get("status", ""), "?"), who, r.get("status", "?"), shown + _output(r)))
    width = max((len(r[1]) for r in rows), default=0)
    lines += [f"  {m} {who:<{width}}  {st:<4}  {rest}".rstrip() for m, who, st, rest in rows]
    return "\n".join(lines)


def _output(r: dict[str, Any]) -> str:
    return f"  {r['output']}" if r.get("output") else ""


# -- logs --------------------------------------------------------------------------------------------------------
def format_line(line: dict[str, Any], colour: bool) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(line["at"]))
    pid = f"[{line['pid']}]" if line.get("pid") else ""
    prefix = paint(f"{line.get('path', '')} {line['stream']}{pid}".lstrip(), _STREAM_COLOUR.get(line["stream"]), colour)
    return f"{stamp} {prefix} {line['text']}"


def _gap_text(data: dict[str, Any], what: str) -> str:
    if data.get("restarted"):
        return f"... the daemon restarted; its earlier {what} are not kept"
    return f"... {data.get('missed', '?')} {what} missed"


async def why(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    """The child's exit history, its crash-loop episode, the last failed incarnation's output, a diagnosis."""
    path = args.path.strip("/")
    status, text = await admin.request("GET", f"/children/{quote(path, safe='/')}/exits")
    if status == 404:
        raise Failed(f"{error_text(text)} (error 404); `ctl status` shows the paths")
    if status >= 400:
        raise Refused(status, text)
    doc = json.loads(text)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(render_why(doc, colour_on(out)), file=out)
    return exits.OK


def render_why(doc: dict[str, Any], colour: bool = False) -> str:
    lines = [f"{doc['path']}: {doc['diagnosis']}"]
    loop = doc.get("crash_loop")
    if loop:
        since = time.strftime("%H:%M:%S", time.localtime(loop["since"]))
        said = f", last line {loop['line'][:120]!r}" if loop["line"] else ""
        lines.append(paint(f"crash-looping since {since}: {loop['count']} failures ({loop['cause']}){said}", "31;1",
                           colour))  # fmt: skip
    blocked = doc.get("loop_blocked")
    if blocked:
        where = blocked["frames"][-1] if blocked["frames"] else "?"
        lines.append(paint(f"blocked the event loop {blocked['count']} time(s), {blocked['total_s']:.1f}s in all; "
                           f"the last at {_clock(blocked['last_at'])} for {blocked['last_s']:.2f}s, in {where}",
                           "33;1", colour))  # fmt: skip
    records = doc.get("exits", [])
    if not records:
        lines.append("no incarnation has ended yet")
        return "\n".join(lines)
    rows = [("started", "ready", "ended", "ran", "cause", "how", "peak RSS", "cpu")]
    for r in records:
        how = r["detail"] or r["reason"]
        if r.get("certainty") and r["certainty"] != "certain":
            how += f" ({r['certainty']})"
        rows.append((_clock(r["started_at"]), _clock(r["ready_at"]) if r["ready_at"] else "never",
                     _clock(r["ended_at"]), _ran(r["runtime_s"]), r["cause"], how[:80],
                     _bytes(r["peak_rss_bytes"]) if r.get("peak_rss_bytes") else "-",
                     f"{r['cpu_s']:.1f}s" if r.get("cpu_s") is not None else "-"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    failed = next((r for r in reversed(records) if r["cause"] not in ("stopped", "exited")), None)
    if failed is not None and failed["last_lines"]:
        lines += ["", f"last output of the last failed incarnation (pid {failed['pid']}, {failed['cause']}):"]
        lines += [f"  {line}" for line in failed["last_lines"]]
    return "\n".join(lines)


def _ran(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 10 else _uptime(seconds)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if unit == "GiB" else f"{n / size:.0f} {unit}"
    return f"{n} B"


async def logs(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    path = args.path.strip("/")
    colour = colour_on(out)
    url = f"/children/{quote(path, safe='/')}/logs?lines={max(0, args.lines)}"
    if not args.follow:
        status, text = await admin.request("GET", url, accept="application/x-ndjson")
        if status == 404:
            raise Failed(f"{error_text(text)} (error 404); `ctl status` shows the paths")
        if status >= 400:
            raise Refused(status, text)
        docs = [json.loads(raw) for raw in text.splitlines()]
        if args.json:
            print(json.dumps(docs, indent=2), file=out)
        for doc in [] if args.json else docs:
            print(format_line(doc, colour), file=out, flush=True)
        if not docs and not args.json:
            print(f"({path}: no output kept)", file=sys.stderr)
        return exits.OK
    async for name, data in admin.follow(url + "&follow=1"):
        if name == "gap":
            print(paint(_gap_text(data, "lines"), "2", colour), file=out, flush=True)
        elif name == "line":
            print(json.dumps(data) if args.json else format_line(data, colour), file=out, flush=True)
    return exits.OK


# -- events ------------------------------------------------------------------------------------------------------
def format_event(ev: dict[str, Any], colour: bool) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("at", 0)))
    kind = ev.get("type", "?")
    skip = {"type", "at", "path", "id"}
    fields = " ".join(f"{k}={_short(v)}" for k, v in ev.items() if k not in skip)
    return f"{stamp} {paint(kind, _EVENT_COLOUR.get(kind), colour)} {ev.get('path') or '/'} {fields}".rstrip()


def _short(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"kind", "detail"}:
        return f"{value['kind']}" + (f"({value['detail']})" if value["detail"] else "")
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.0f}"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _event_query(args: argparse.Namespace) -> str:
    parts = [f"path={quote(p.strip('/'), safe='/')}" for p in args.path]
    if args.type:
        parts += [f"type={quote(t)}" for t in args.type]
    elif not args.all:
        parts += [f"exclude_type={t}" for t in NOISE]
    return "".join(f"&{p}" for p in parts)


async def events(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    colour = colour_on(out)
    query = _event_query(args)
    status, text = await admin.request("GET", f"/events?limit={max(0, args.lines)}{query}")
    if status >= 400:
        raise Refused(status, text)
    last = None
    for raw in text.splitlines():
        doc = json.loads(raw)
        last = doc["id"]
        print(raw if args.json else format_event(doc, colour), file=out, flush=True)
    if not args.follow:
        return exits.OK
    since = f"&last_event_id={last}" if last is not None else ""  # then everything after what was printed
    async for name, data in admin.follow(f"/events?follow=1{query}{since}"):
        if name == "gap":
            print(paint(_gap_text(data, "events"), "2", colour), file=out, flush=True)
        else:
            print(json.dumps(data) if args.json else format_event(data, colour), file=out, flush=True)
    return exits.OK


# -- the fleet ---------------------------------------------------------------------------------------------------
async def cluster(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    if args.cluster_action == "status":
        view = await admin.get_json("/cluster")
        print(json.dumps(view, indent=2) if args.json else render_cluster(view), file=out)
        return exits.OK
    query = f"path={quote(args.path.strip('/'), safe='')}&node={quote(args.node, safe='')}"
    status, text = await admin.request("POST", f"/cluster/move?{query}")
    if status >= 400:
        raise Refused(status, text)
    if args.json:
        print(text, file=out)
    else:
        print(f"{args.path.strip('/')}: moving to {args.node} (its holder hands it over at its next heartbeat; "
              "`ctl cluster status` shows when it is there)", file=out)  # fmt: skip
    return exits.OK


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
        if single.get("holder"):
            line = (f"  {single['path']:<20} held by {single['holder']} (token {single['token']}, "
                    f"since {max(0.0, now - single['since']):.0f}s)")  # fmt: skip
        else:
            unheld = single.get("unheld_for")
            line = f"  {single['path']:<20} held by nobody" + (f" for {unheld:.0f}s" if unheld is not None else "")
        if len(single.get("holders", ())) > 1:
            line += f", ALARM: {len(single['holders'])} nodes say they hold it ({', '.join(single['holders'])})"
        if single.get("wanted"):
            line += f", moving to {single['wanted']} (asked {single.get('wanted_age') or 0:.0f}s ago)"
        lines.append(line)
    return "\n".join(lines)


async def alerts(admin: Admin, args: argparse.Namespace, out: TextIO) -> int:
    """``ctl alerts``: each receiver and how it fares; ``ctl alerts test NAME``: send it a test alert now."""
    if args.alerts_action == "test":
        name = args.name
        status, text = await admin.request("POST", f"/alerts/{quote(name, safe='')}/test")
        if status == 404:
            raise Failed(f"{error_text(text)}; `ctl alerts` lists them")
        if status == 502:
            doc = json.loads(text)
            if args.json:
                print(text, file=out)
                return exits.FAILED
            raise Failed(f"{name}: the test alert was not taken: {doc.get('error')}")
        if status >= 400:
            raise Refused(status, text)
        print(text if args.json else f"{name}: test alert sent", file=out)
        return exits.OK
    doc = await admin.get_json("/alerts")
    print(json.dumps(doc, indent=2) if args.json else render_alerts(doc), file=out)
    return exits.OK


def render_alerts(doc: dict[str, Any]) -> str:
    receivers = doc.get("receivers", [])
    if not receivers:
        return "no alerts configured (add [[daemon.alerts]] to the config: docs/forensics.md)"
    rows = [("name", "receiver", "on", "sent", "failed", "dropped", "last")]
    for r in receivers:
        if r["up"] is None:
            last = "nothing sent yet"
        elif r["up"]:
            last = f"ok at {_clock(r['last_ok'])}"
        else:
            last = f"FAILING since {_clock(r['last_error_at'])}: {r['last_error']}"
        rows.append((r["name"], r["receiver"], ",".join(r["on"]), str(r["sent"]), str(r["failed"]),
                     str(r["dropped"]), last[:100]))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if doc.get("crash_looping"):
        lines.append(f"crash-looping now: {', '.join(doc['crash_looping'])}")
    return "\n".join(lines)


Command = Callable[[Admin, argparse.Namespace, TextIO], Awaitable[int]]
COMMANDS: dict[str, Command] = {
    "status": status, "restart": act, "stop": act, "start": act, "scale": scale, "reload": reload, "health": health,
    "logs": logs, "events": events, "cluster": cluster, "signal": send_signal, "why": why,
    "alerts": alerts,
}  # fmt: skip
