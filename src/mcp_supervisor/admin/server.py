"""The admin HTTP port (aiohttp): read views of the tree and health, and a few token-guarded controls.

Private by default (loopback or a unix socket); GETs are read-only; mutations are POST-only, need
``Authorization: Bearer <token>`` (compared in constant time) and are off unless a token file is configured;
``Host`` is checked against loopback names to defeat DNS rebinding; bodies are small; every mutation is logged.
Every body it sends passes through the daemon's redactor; connections are bounded (``http.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from ..core import FailedToStartChild, NodeStatus, NoSuchPath, NotRunning, OperationError, State, Tree
from ..journal import Journal
from .http import BODY_TIMEOUT, ConnectionLimits, GuardedHandler, GuardedTCPSite, GuardedUnixSite
from .openapi import OPENAPI
from .streams import Streams
from .ui import UI

MAX_BODY = 16 * 1024
QUERY_PARAMETERS: dict[str, frozenset[str]] = {
    "/reload": frozenset({"wait"}),
    "/events": frozenset({"follow", "last_event_id", "limit", "path"}),
    "/children/{path}/logs": frozenset({"follow", "last_event_id", "lines", "format"}),
    "/children/{path}/{action}": frozenset({"rolling"}),
    "/children/{path}/scale": frozenset({"instances"}),
    "/cluster/move": frozenset({"path", "node"}),
}
"""Query parameters each route takes; any other is a 400 naming it."""
_BACKGROUND = web.AppKey("background", set[asyncio.Task[Any]])  # reloads accepted with wait=0
STREAMS = web.AppKey("streams", Streams)
HEALTH_JSON = "application/health+json"


@runtime_checkable
class Health(Protocol):
    """What the admin port needs from a health monitor (the tree's own state stands in until one runs).

    A running child whose handle provides it is the daemon's health monitor (the built-in ``health`` worker's does).
    """

    def document(self) -> tuple[dict[str, Any], int]: ...

    def ready(self) -> bool: ...

    async def check_now(self) -> dict[str, Any]: ...


def find_health(tree: Tree) -> Health | None:
    """The running health monitor's handle, looked up on every request so that it follows restarts."""
    for child in tree.rt.walk():
        if child.alive and isinstance(child.handle, Health):
            return child.handle
    return None


@dataclass(slots=True, kw_only=True)
class AdminState:
    """Everything the handlers read; the daemon owns it and swaps ``tree`` or ``token`` on reload."""

    tree: Tree
    log: Any
    metrics: Callable[[], tuple[bytes, str]]
    reload: Callable[[], Awaitable[dict[str, Any]]]
    token: str | None = None
    draining: bool = False
    find_health: Callable[[], Health | None] = lambda: None  # the daemon passes lambda: find_health(tree)
    started_at: float = field(default_factory=time.time)
    on_mutation: Callable[[str], None] | None = None
    redact: Callable[[Any], Any] = lambda doc: doc
    """Cleans a response document's free text (the daemon's redactor; ids, paths and states are kept)."""
    journal: Journal | None = None
    """Recent events and each child's output, for /events and /children/{path}/logs (none: 503)."""
    scale: Callable[[str, int], Awaitable[dict[str, Any]]] | None = None
    """Start or stop instances of a replicated child (LookupError: not one; ValueError: a bad count)."""
    cluster: Callable[[], dict[str, Any]] | None = None
    """The fleet as this node last read it (None: not in a cluster, 404)."""
    move: Callable[[str, str], Awaitable[None]] | None = None
    """Ask for a singleton to run on a node (LookupError: not a singleton)."""
    roll: Callable[[str], Awaitable[dict[str, Any]]] | None = None
    """Restart a child's instances one at a time; the result says ``ok`` and, if not, which failed and why."""


def allowed_hosts(admin: str) -> set[str] | None:
    """Host header values accepted for ``admin`` (None: no check, e.g. a unix socket)."""
    if admin.startswith("unix:"):
        return None
    host, _, port = admin.rpartition(":")
    names = {host, "localhost", "127.0.0.1", "[::1]"}
    return {f"{n}:{port}" for n in names} | ({"localhost"} if port == "80" else set())


def build_app(state: AdminState, hosts: set[str] | None) -> web.Application:
    def _json(data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
        return web.Response(
            text=json.dumps(state.redact(data), indent=None, separators=(",", ":"), default=str),
            status=status,
            content_type=content_type,
            headers={"Cache-Control": "no-store"},
        )

    def _error(status: int, message: str, **headers: str) -> web.Response:
        resp = _json({"error": message, "status": status}, status)
        resp.headers.update(headers)
        return resp

    def _http_error(e: web.HTTPException) -> web.Response:
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else {}
        message = f"method not allowed; use {headers['Allow']}" if e.status == 405 else e.reason.lower()
        return _error(e.status, message, **headers)

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        proto = request.protocol
        if isinstance(proto, GuardedHandler):
            proto.request_started()
        try:
            return await _guarded(request, handler)
        finally:
            if isinstance(proto, GuardedHandler):
                proto.request_finished()

    async def _guarded(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if hosts is not None and request.host not in hosts:
            return _error(421, f"unexpected Host header {request.host[:100]!r}; use a loopback name")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(413, f"request body over {MAX_BODY} bytes")
        if (unmatched := request.match_info.http_exception) is not None:  # no route, or a method it does not take
            return _http_error(unmatched)
        route = request.match_info.route.resource
        allowed = QUERY_PARAMETERS.get(route.canonical, frozenset()) if route is not None else frozenset()
        unknown = sorted(set(request.query) - allowed)
        if unknown:
            return _error(
                400, f"unknown query parameter {unknown[0][:40]!r} (allowed: {', '.join(sorted(allowed)) or 'none'})"
            )
        try:
            if request.body_exists:
                async with asyncio.timeout(BODY_TIMEOUT):
                    await request.read()  # enforces client_max_size for chunked bodies too
            return await handler(request)
        except web.HTTPException as e:  # aiohttp's own (body too large, ...): our JSON shape
            if e.status < 400:
                raise
            return _http_error(e)
        except TimeoutError:
            return _error(408, f"the request body did not arrive within {BODY_TIMEOUT:g}s")
        except (ValueError, UnicodeError) as e:
            return _error(400, f"bad request: {type(e).__name__}")

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)

    async def status(_: web.Request) -> web.Response:
        doc = state.tree.status().as_dict()
        doc["isolation"] = state.tree.isolation
        doc["fleet"] = state.cluster is not None
        return _json(doc)

    async def livez(_: web.Request) -> web.Response:
        alive = not state.tree.done
        return _json({"status": "pass" if alive else "fail"}, 200 if alive else 503)

    async def readyz(_: web.Request) -> web.Response:
        if state.draining:
            return _json({"status": "fail", "output": "draining"}, 503)
        monitor = state.find_health()
        ok = tree_ready(state.tree.status()) if monitor is None else monitor.ready()
        doc: dict[str, Any] = {"status": "pass" if ok else "fail"}
        if state.cluster is not None:  # local children run on; the fleet's singletons wait for the database
            view = state.cluster()
            doc["cluster"] = "connected" if view["connected"] else f"database unreachable: {view['error']}"
        return _json(doc, 200 if ok else 503)

    async def health(_: web.Request) -> web.Response:
        monitor = state.find_health()
        doc, code = monitor.document() if monitor is not None else tree_health(state.tree.status())
        return _json(doc, code, HEALTH_JSON)

    async def metrics(_: web.Request) -> web.Response:
        body, ctype = state.metrics()
        resp = web.Response(body=body)  # names and numbers only: nothing to redact
        resp.headers["Content-Type"] = ctype
        return resp

    async def openapi(_: web.Request) -> web.Response:
        return _json(OPENAPI)

    streams = Streams(lambda: state.journal, _error, state.redact)
    app[STREAMS] = streams

    async def events(request: web.Request) -> web.StreamResponse:
        try:
            return await streams.events(request, _flag(request, "follow", None))
        except ValueError as e:
            return _error(400, str(e))

    async def logs(request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"].strip("/")
        try:
            state.tree.child(path)
            known = True
        except (NoSuchPath, NotRunning):
            known = False
        try:
            return await streams.logs(request, path, known, _flag(request, "follow", None))
        except ValueError as e:
            return _error(400, str(e))

    def authorize(request: web.Request) -> web.Response | None:
        if state.token is None:
            return _error(403, "mutations are disabled: configure daemon.admin_token_file")
        header = request.headers.get("Authorization", "")
        if not header:
            return _error(401, "missing Authorization: Bearer <token>", **{"WWW-Authenticate": "Bearer"})
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), state.token.encode()):
            return _error(403, "wrong token")
        return None

    def audit(request: web.Request, action: str, outcome: str, **extra: Any) -> None:
        peer = request.remote or "unix"
        state.log.info("admin mutation", action=action, outcome=outcome, peer=peer, **extra)
        if state.on_mutation is not None:
            state.on_mutation(outcome)

    async def child_action(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        path = request.match_info["path"].strip("/")
        try:
            rolling = _flag(request, "rolling", False)
        except ValueError as e:
            return _error(400, str(e))
        if rolling and action != "restart":
            return _error(409, f"rolling applies only to restart, not to {action}")
        what = f"{action} {path}" + (" rolling" if rolling else "")
        denied = authorize(request)
        if denied is not None:
            audit(request, what, f"denied {denied.status}")
            return denied
        tree = state.tree
        try:
            if rolling and state.roll is not None:  # the path of a replicated child, or of any one child
                result = await state.roll(path)
                audit(request, what, "ok" if result["ok"] else f"stopped at {result['failed']}")
                code = 200 if result["ok"] else 409
                return _json(
                    {"path": path, "action": "restart", "child": None, "rolling": True, "status": code, **result}, code
                )
            if action == "stop":
                await tree.terminate_child(path)
            elif action == "start":
                await tree.restart_child(path)
            else:
                await tree.restart(path)
        except NoSuchPath as e:
            audit(request, what, "not found")
            return _error(404, str(e))
        except (OperationError, FailedToStartChild, NotRunning) as e:
            audit(request, what, f"conflict: {e}")
            return _error(409, str(e))
        audit(request, what, "ok")
        node = next((c for c in tree.which_children(path.rpartition("/")[0]) if c.path == path), None)
        return _json({"path": path, "action": action, "child": node.as_dict() if node is not None else None})

    async def scale(request: web.Request) -> web.Response:
        path = request.match_info["path"].strip("/")
        denied = authorize(request)
        if denied is not None:
            audit(request, f"scale {path}", f"denied {denied.status}")
            return denied
        raw = request.query.get("instances", "")
        if not raw.isdigit():
            return _error(400, f"instances must be a non-negative integer, got {raw[:20]!r}")
        if state.scale is None:
            return _error(503, "scaling is not available")
        try:
            changed = await state.scale(path, int(raw))
        except LookupError as e:
            audit(request, f"scale {path}", "not found")
            return _error(404, str(e.args[0]) if e.args else str(e))
        except ValueError as e:
            return _error(400, str(e))
        except (OperationError, FailedToStartChild, NotRunning) as e:
            audit(request, f"scale {path} to {raw}", f"conflict: {e}")
            return _error(409, str(e))
        audit(request, f"scale {path} to {raw}", "ok")
        return _json({"path": path, "instances": int(raw), **changed})

    async def cluster(_: web.Request) -> web.Response:
        if state.cluster is None:
            return _error(404, "this node is not in a cluster (no [cluster] table)")
        return _json(state.cluster())

    async def cluster_move(request: web.Request) -> web.Response:
        path, node = request.query.get("path", "").strip("/"), request.query.get("node", "")
        denied = authorize(request)
        if denied is not None:
            audit(request, f"move {path} to {node}", f"denied {denied.status}")
            return denied
        if state.move is None:
            return _error(404, "this node is not in a cluster (no [cluster] table)")
        if not path or not node:
            return _error(400, "needs path and node")
        try:
            await state.move(path, node)
        except LookupError as e:
            return _error(404, str(e.args[0]) if e.args else str(e))
        except Exception as e:  # noqa: BLE001 - the database did not answer: say so, never a 500
            audit(request, f"move {path} to {node}", "unavailable")
            return _error(503, f"the cluster database did not answer ({type(e).__name__})")
        audit(request, f"move {path} to {node}", "ok")
        return _json({"path": path, "node": node, "requested": True})

    async def reload(request: web.Request) -> web.Response:
        denied = authorize(request)
        if denied is not None:
            audit(request, "reload", f"denied {denied.status}")
            return denied
        try:
            wait = _flag(request, "wait", True)
        except ValueError as e:
            return _error(400, str(e))
        if not wait:
            task = asyncio.ensure_future(state.reload())
            app[_BACKGROUND].add(task)
            task.add_done_callback(app[_BACKGROUND].discard)
            audit(request, "reload", "accepted")
            return _json({"accepted": True}, 202)
        result = await state.reload()
        audit(request, "reload", "ok" if result.get("ok") else "failed")
        return _json(result, 200 if result.get("ok") else 422)

    async def health_check(request: web.Request) -> web.Response:
        denied = authorize(request)
        if denied is not None:
            return denied
        monitor = state.find_health()
        if monitor is None:
            return _error(404, 'no health monitor is running (add a worker = "health" child)')
        audit(request, "health check", "ok")
        return _json(await monitor.check_now(), 200, HEALTH_JSON)

    app[_BACKGROUND] = set()
    app.router.add_get("/status", status)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/children/{path:.+}/{action:restart|stop|start}", child_action)
    app.router.add_post("/children/{path:.+}/scale", scale)
    app.router.add_get("/children/{path:.+}/logs", logs)
    app.router.add_get("/events", events)
    UI.add_routes(app)
    app.router.add_post("/reload", reload)
    app.router.add_get("/cluster", cluster)
    app.router.add_post("/cluster/move", cluster_move)
    app.router.add_post("/health/check", health_check)
    return app


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _flag(request: web.Request, name: str, default: Any) -> Any:
    """A boolean query parameter given at most once: 1/true/yes or 0/false/no; ValueError names what is wrong."""
    values = request.query.getall(name, [])
    if not values:
        return default
    if len(values) > 1:
        raise ValueError(f"query parameter {name!r} given {len(values)} times")
    value = values[0].lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"query parameter {name!r} must be true or false (1/0, yes/no), got {values[0][:40]!r}")
    return value in _TRUE


def tree_ready(tree: NodeStatus) -> bool:
    return tree.state is State.RUNNING and all(c.state is State.RUNNING for c in tree.children)


def tree_health(tree: NodeStatus) -> tuple[dict[str, Any], int]:
    """health+json from the tree alone: fail if the root is down, warn if a child is not running."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    checks = [
        {
            "componentId": c.path,
            "componentType": "component",
            "observedValue": str(c.state),
            "status": "pass" if c.state is State.RUNNING else "warn",
            "time": now,
        }
        for c in tree.children
    ]
    worst = (
        "fail"
        if tree.state is not State.RUNNING
        else ("warn" if any(c["status"] == "warn" for c in checks) else "pass")
    )
    body = {
        "status": worst,
        "serviceId": "mcp-supervisor",
        "description": "supervision tree state (no health monitor configured)",
        "checks": {"tree:children": checks},
    }
    return body, 503 if worst == "fail" else 200


class AdminServer:
    """Runs the app on TCP or a unix socket with explicit setup and a bounded cleanup (aiohttp web_runner)."""

    def __init__(
        self, state: AdminState, address: str, allow_remote: bool = False, limits: ConnectionLimits | None = None
    ) -> None:
        self.address = address
        self.limits = limits if limits is not None else ConnectionLimits()
        hosts = None if (allow_remote or address.startswith("unix:")) else allowed_hosts(address)
        self._runner = web.AppRunner(
            build_app(state, hosts), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )

    async def start(self) -> None:
        await self._runner.setup()
        site: web.BaseSite
        if self.address.startswith("unix:"):
            path = self.address[5:]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a stale socket from a previous run
            site = GuardedUnixSite(self._runner, path, self.limits)
            await site.start()
            os.chmod(path, 0o660)
        else:
            host, _, port = self.address.rpartition(":")
            site = GuardedTCPSite(self._runner, host.strip("[]"), int(port), self.limits)
            await site.start()

    async def stop(self) -> None:
        await self._runner.cleanup()
