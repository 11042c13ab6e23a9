"""The admin HTTP port (aiohttp): read views of the tree and health, and a few token-guarded controls.

Private by default (loopback or a unix socket); GETs are read-only; mutations are POST-only, need
``Authorization: Bearer <token>`` (compared in constant time) and are off unless a token file is configured;
``Host`` is checked against loopback names to defeat DNS rebinding; bodies are small; every mutation is audited.
Every body it sends passes through the daemon's redactor; connections are bounded (``http.py``).

Handlers are module-level functions that find what they need in the app under typed keys (:data:`VIEWS`,
:data:`CONTROLS`, see ``seams.py``); :func:`mutation` writes authorize-then-audit once for every control.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..core import (
    Address,
    FailedToStartChild,
    NodeStatus,
    NoSuchPath,
    NotRunning,
    OperationError,
    State,
    describe,
    splice,
)
from .http import BODY_TIMEOUT, ConnectionLimits, GuardedHandler, tcp_site, unix_site
from .openapi import OPENAPI, SIGNALS
from .seams import Controls, Outcome, Views
from .streams import Streams, wants_stream
from .ui import UI

MAX_BODY = 16 * 1024
QUERY_PARAMETERS: dict[str, frozenset[str]] = {
    "/reload": frozenset({"wait"}),
    "/events": frozenset({"follow", "last_event_id", "limit", "path", "type", "exclude_type"}),
    "/children/{path}/logs": frozenset({"follow", "last_event_id", "lines", "format"}),
    "/children/{path}/{action}": frozenset({"rolling", "instances", "signal", "group"}),
    "/cluster/move": frozenset({"path", "node"}),
}
"""Query parameters each route takes; any other is a 400 naming it."""
CHILD_ACTIONS = ("restart", "stop", "start", "scale", "signal")
MAX_INSTANCES = 1024  # as the config's (config.model.MAX_INSTANCES; tests/admin/test_openapi.py checks both)
HEALTH_JSON = "application/health+json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VIEWS = web.AppKey("views", Views)
CONTROLS = web.AppKey("controls", Controls)
STREAMS = web.AppKey("streams", Streams)
REDACT: web.AppKey[Callable[[Any], Any]] = web.AppKey("redact")
HEAVY_PER_TURN = 8
"""Requests that build a document (``/status``, ``/metrics``, ...) handled per turn of the event loop; the rest
wait for the next turns, so that under a flood a turn stays short and ``/livez``, ``/readyz`` — which never wait —
are answered within a turn or two."""


class PerTurn:
    """At most ``n`` holders per turn of the event loop, first come first served. (A semaphore would not do: a
    handler that never yields takes and gives it back within one step, so it never limits anything.)"""

    def __init__(self, n: int) -> None:
        self.n = n
        self._used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._turn_scheduled = False

    async def wait(self) -> None:
        if self._used < self.n and not self._waiters:
            self._used += 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._used -= 1  # it was let in, but its request went away: give the place on
                raise
        self._next_turn()

    def _next_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        self._turn_scheduled = False
        self._used = 0
        while self._waiters and self._used < self.n:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._used += 1
        if self._waiters:
            self._next_turn()


_GATE = web.AppKey("gate", PerTurn)
_HOSTS = web.AppKey("hosts", object)  # set[str] | None: accepted Host headers (None: no check)
_BACKGROUND = web.AppKey("background", set[asyncio.Task[Any]])  # reloads accepted with wait=0


# -- responses ---------------------------------------------------------------------------------------------------
def reply(request: web.Request, data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    """A JSON response, redacted (ids, paths and states kept; free text cleaned)."""
    return web.Response(
        text=json.dumps(request.app[REDACT](data), indent=None, separators=(",", ":"), default=str),
        status=status,
        content_type=content_type,
        headers={"Cache-Control": "no-store"},
    )


def error(request: web.Request, status: int, message: str, **headers: str) -> web.Response:
    resp = reply(request, {"error": message, "status": status}, status)
    resp.headers.update(headers)
    return resp


def _http_error(request: web.Request, e: web.HTTPException) -> web.Response:
    headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else {}
    message = f"method not allowed; use {headers['Allow']}" if e.status == 405 else e.reason.lower()
    return error(request, e.status, message, **headers)


# -- the guard every request passes ------------------------------------------------------------------------------
@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    proto = request.protocol
    if isinstance(proto, GuardedHandler):
        proto.request_started()
    response: web.StreamResponse | None = None
    try:
        response = await _guarded(request, handler)
        return response
    finally:
        if isinstance(proto, GuardedHandler):
            proto.request_finished(response)


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    hosts = request.app[_HOSTS]
    if isinstance(hosts, set) and request.host not in hosts:
        return error(request, 421, f"unexpected Host header {request.host[:100]!r}; use a loopback name")
    if request.content_length is not None and request.content_length > MAX_BODY:
        return error(request, 413, f"request body over {MAX_BODY} bytes")
    if (unmatched := request.match_info.http_exception) is not None:  # no route, or a method it does not take
        return _http_error(request, unmatched)
    route = request.match_info.route.resource
    allowed = QUERY_PARAMETERS.get(route.canonical, frozenset()) if route is not None else frozenset()
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        shown = ", ".join(sorted(allowed)) or "none"
        return error(request, 400, f"unknown query parameter {unknown[0][:40]!r} (allowed: {shown})")
    try:
        if request.body_exists:
            async with asyncio.timeout(BODY_TIMEOUT):
                await request.read()  # enforces client_max_size for chunked bodies too
        return await handler(request)
    except web.HTTPException as e:  # aiohttp's own (body too large, ...): our JSON shape
        if e.status < 400:
            raise
        return _http_error(request, e)
    except TimeoutError:
        return error(request, 408, f"the request body did not arrive within {BODY_TIMEOUT:g}s")
    except (ValueError, UnicodeError) as e:
        return error(request, 400, f"bad request: {e}" if isinstance(e, ValueError) else "bad request: not UTF-8")


def _authorize(request: web.Request, token: str | None) -> web.Response | None:
    if token is None:
        return error(request, 403, "mutations are disabled: set daemon.admin_token_file in the config")
    header = request.headers.get("Authorization", "")
    if not header:
        return error(request, 401, "missing Authorization: Bearer <token> (the contents of daemon.admin_token_file; "
                     "ctl reads it, or takes --token-file FILE)", **{"WWW-Authenticate": "Bearer"})  # fmt: skip
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return error(request, 403, "wrong token: send the contents of the file daemon.admin_token_file names")
    return None


def mutation(describe_action: Callable[[web.Request], str]) -> Callable[[Handler], Handler]:
    """A control: authorized with the token first, then audited with its outcome (from the response's status)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            controls = request.app[CONTROLS]
            action, peer = describe_action(request), request.remote or "unix"
            resp: web.StreamResponse | None = _authorize(request, controls.token)
            if resp is None:
                try:
                    resp = await handler(request)
                except ValueError as e:  # a bad parameter: answered (and audited) here
                    resp = error(request, 400, f"bad request: {e}")
            detail = ""
            if resp.status >= 400 and isinstance(resp, web.Response) and resp.text:
                with contextlib.suppress(ValueError, TypeError):
                    detail = str(json.loads(resp.text).get("error", ""))
            controls.audited(action, Outcome.of_status(resp.status), resp.status, peer, detail)
            return resp

        return guarded

    return wrap


# -- reads -------------------------------------------------------------------------------------------------------
def heavy(handler: Handler) -> Handler:
    """A read that builds a document: at most :data:`HEAVY_PER_TURN` per turn of the loop."""

    @functools.wraps(handler)
    async def gated(request: web.Request) -> web.StreamResponse:
        await request.app[_GATE].wait()
        return await handler(request)

    return gated


@heavy
async def status(request: web.Request) -> web.Response:
    views = request.app[VIEWS]
    doc = splice(views.tree.status(), views.isolated()).as_dict()  # isolated subtrees' children as local ones
    doc["isolation"] = views.tree.isolation
    doc["fleet"] = views.cluster() is not None
    alerts = views.alerts()
    if alerts is not None:
        doc["alerts"] = alerts["receivers"]
    return reply(request, doc)


async def livez(request: web.Request) -> web.Response:
    alive = not request.app[VIEWS].tree.done
    return reply(request, {"status": "pass" if alive else "fail"}, 200 if alive else 503)


async def readyz(request: web.Request) -> web.Response:
    views = request.app[VIEWS]
    if views.draining:
        return reply(request, {"status": "fail", "output": "draining"}, 503)
    monitor = views.health()
    ok = tree_ready(views.tree.status()) if monitor is None else monitor.ready()
    doc: dict[str, Any] = {"status": "pass" if ok else "fail"}
    view = views.cluster()
    if view is not None:  # local children run on; the fleet's singletons wait for the database
        doc["cluster"] = "connected" if view.connected else f"database unreachable: {view.error}"
        if view.conflict is not None:  # a node that may hold nothing is not ready
            ok, doc["status"], doc["cluster"] = False, "fail", view.conflict
    return reply(request, doc, 200 if ok else 503)


@heavy
async def health(request: web.Request) -> web.Response:
    views = request.app[VIEWS]
    monitor = views.health()
    doc, code = monitor.document() if monitor is not None else tree_health(views.tree.status())
    return reply(request, doc, code, HEALTH_JSON)


@heavy
async def metrics(request: web.Request) -> web.Response:
    body, ctype = request.app[VIEWS].metrics()
    resp = web.Response(body=body)  # names and numbers only: nothing to redact
    resp.headers["Content-Type"] = ctype
    return resp


@heavy
async def openapi(request: web.Request) -> web.Response:
    return reply(request, OPENAPI)


async def root(_: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def events(request: web.Request) -> web.StreamResponse:
    follow = _flag(request, "follow", None)
    if not wants_stream(request, follow):  # a stream waits for events, not for its turn
        await request.app[_GATE].wait()
    return await request.app[STREAMS].events(request, follow)


async def logs(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"].strip("/")
    unknown, subtree = None, False
    try:
        subtree = request.app[VIEWS].tree.child(path).spec.kind == "supervisor"
    except (NoSuchPath, NotRunning, OperationError) as e:
        unknown = str(e)
    follow = _flag(request, "follow", None)
    if not wants_stream(request, follow):
        await request.app[_GATE].wait()
    return await request.app[STREAMS].logs(request, path, unknown, follow, subtree)


@heavy
async def exits(request: web.Request) -> web.Response:
    """The child's exit history, its crash-loop episode and a one-line diagnosis (``ctl why``)."""
    path = request.match_info["path"].strip("/")
    try:
        inside = await request.app[CONTROLS].inside(path, "exits")  # a child of an isolated subtree: its record
        if inside is not None:
            return reply(request, {"path": path, **inside})
        records, episode, diagnosis = request.app[VIEWS].tree.exits(path)
    except (NoSuchPath, NotRunning, OperationError, LookupError) as e:
        return error(request, 404, str(e.args[0]) if e.args else str(e))
    blocked = request.app[VIEWS].tree.loop_blocked(path)
    return reply(request, {"path": path, "diagnosis": diagnosis,
                           "crash_loop": episode.as_dict() if episode is not None else None,
                           "exits": [r.as_dict() for r in records],
                           "loop_blocked": blocked.as_dict() if blocked is not None else None})  # fmt: skip


@heavy
async def cluster(request: web.Request) -> web.Response:
    view = request.app[VIEWS].cluster()
    if view is None:
        return error(request, 404, "this node is not in a cluster (no [cluster] table)")
    return reply(request, view.as_dict())


async def alerts(request: web.Request) -> web.Response:
    doc = request.app[VIEWS].alerts()
    if doc is None:
        return error(request, 404, "alerts are not part of this admin port")
    return reply(request, doc)


# -- controls ----------------------------------------------------------------------------------------------------
def _child_action(request: web.Request) -> str:
    action, path = request.match_info["action"], request.match_info["path"].strip("/")
    extra = " rolling" if request.query.get("rolling") in _TRUE else ""
    if action == "scale":
        extra = f" to {request.query.get('instances', '?')[:20]}"
    elif action == "signal":
        extra = f" {request.query.get('signal', '?')[:20]}"
    return f"{action} {path}{extra}"


async def child_action(request: web.Request) -> web.StreamResponse:
    """``POST /children/{path}/{action}``: an unknown action is a 400, before any token is asked for."""
    action = request.match_info["action"]
    if action not in CHILD_ACTIONS:
        return error(request, 400, f"unknown action {action[:40]!r} (one of: {', '.join(CHILD_ACTIONS)})")
    return await _child_action_guarded(request)


@mutation(_child_action)
async def _child_action_guarded(request: web.Request) -> web.Response:
    action, path = request.match_info["action"], request.match_info["path"].strip("/")
    if action == "scale":
        return await _scale(request, path)
    if action == "signal":
        return await _signal(request, path)
    if "signal" in request.query or "group" in request.query:
        return error(request, 400, "signal and group apply only to the signal action")
    rolling = _flag(request, "rolling", False)
    if rolling and action != "restart":
        return error(request, 409, f"rolling applies only to restart, not to {action}")
    if "instances" in request.query:
        return error(request, 400, "instances applies only to scale")
    views, controls = request.app[VIEWS], request.app[CONTROLS]
    tree = views.tree
    try:
        if rolling:  # the path of a replicated child, or of any one child
            result = await controls.roll(path)
            code = 200 if result.ok else 409
            return reply(request, {"path": path, "action": "restart", "child": None, "rolling": True,
                                   "status": code, **result.as_dict()}, code)  # fmt: skip
        inside = await controls.inside(path, action)  # a child of an isolated subtree: its process does it
        if inside is not None:
            return reply(request, {"path": path, "action": action, "previous_pid": inside.get("previous_pid"),
                                   "child": inside.get("child")})  # fmt: skip
        before = tree.child(path)
        previous_pid = before.pid if before.alive else None
        if action == "stop":
            await tree.terminate_child(path)
        elif action == "start":
            await tree.restart_child(path)
        else:
            await tree.restart(path)
    except (NoSuchPath, LookupError) as e:
        return error(request, 404, str(e.args[0]) if e.args else str(e))
    except (OperationError, FailedToStartChild, NotRunning) as e:
        return error(request, 409, str(e))
    node = next((c for c in tree.which_children(path.rpartition("/")[0]) if c.path == path), None)
    doc = {"path": path, "action": action, "previous_pid": previous_pid,
           "child": node.as_dict() if node is not None else None}  # fmt: skip
    return reply(request, doc)


async def _signal(request: web.Request, path: str) -> web.Response:
    name = request.query.get("signal", "")
    sig = signal_number(name)
    if sig is None:
        return error(request, 400, f"signal must be a signal name or number (HUP, SIGUSR1, 10...), got {name[:20]!r}")
    group = _flag(request, "group", False)
    try:
        inside = await request.app[CONTROLS].inside(path, "signal", signal=sig, group=group)
        pid = inside["pid"] if inside is not None else request.app[VIEWS].tree.signal(path, sig, group)
    except (NoSuchPath, LookupError) as e:
        return error(request, 404, str(e.args[0]) if e.args else str(e))
    except (OperationError, NotRunning) as e:
        return error(request, 409, str(e))
    name = signal.Signals(sig).name
    return reply(request, {"path": path, "action": "signal", "signal": name, "pid": pid, "group": group})


def signal_number(name: str) -> int | None:
    """``HUP``, ``SIGHUP`` or ``1`` → 1 (:data:`~.openapi.SIGNALS`); None for anything else."""
    return SIGNALS.get(name)


async def _scale(request: web.Request, path: str) -> web.Response:
    raw = request.query.get("instances", "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 5 or int(raw) > MAX_INSTANCES:
        return error(request, 400, f"instances must be an integer 0..{MAX_INSTANCES}, got {raw[:20]!r}")
    try:
        report = await request.app[CONTROLS].scale(path, int(raw))
    except LookupError as e:
        return error(request, 404, str(e.args[0]) if e.args else str(e))
    except ValueError as e:
        return error(request, 400, str(e))
    except (OperationError, FailedToStartChild, NotRunning) as e:
        return error(request, 409, str(e))
    doc = {"path": path, "instances": int(raw), "started": list(report.started), "stopped": list(report.stopped)}
    return reply(request, doc)


def _move_action(request: web.Request) -> str:
    return f"move {request.query.get('path', '').strip('/')} to {request.query.get('node', '')}"


@mutation(_move_action)
async def cluster_move(request: web.Request) -> web.Response:
    path, node = request.query.get("path", "").strip("/"), request.query.get("node", "")
    if request.app[VIEWS].cluster() is None:
        return error(request, 404, "this node is not in a cluster (no [cluster] table)")
    if not path or not node:
        return error(request, 400, "needs path and node")
    try:
        await request.app[CONTROLS].move(path, node)
    except LookupError as e:
        return error(request, 404, str(e.args[0]) if e.args else str(e))
    except ValueError as e:  # a node the singleton's nodes do not allow
        return error(request, 400, str(e))
    except Exception as e:  # noqa: BLE001 - the database did not answer: say so, never a 500
        return error(request, 503, f"the cluster database did not answer ({describe(e)})")
    return reply(request, {"path": path, "node": node, "requested": True})


@mutation(lambda _: "reload")
async def reload(request: web.Request) -> web.Response:
    controls = request.app[CONTROLS]
    if not _flag(request, "wait", True):
        if controls.validate() is not None:  # a broken file is refused now (and counted, logged, alerted)
            result = await controls.reload()
            return reply(request, result.as_dict(), 200 if result.ok else 422)
        task = asyncio.ensure_future(controls.reload())
        request.app[_BACKGROUND].add(task)
        task.add_done_callback(request.app[_BACKGROUND].discard)
        return reply(request, {"accepted": True}, 202)
    result = await controls.reload()
    return reply(request, result.as_dict(), 200 if result.ok else 422)


@mutation(lambda r: f"test alert {r.match_info['name'][:64]}")
async def alert_test(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        ok, problem = await request.app[CONTROLS].test_alert(name)
    except LookupError as e:
        return error(request, 404, str(e.args[0]) if e.args else str(e))
    if not ok:
        return reply(request, {"name": name, "sent": False, "error": problem}, 502)
    return reply(request, {"name": name, "sent": True})


@mutation(lambda _: "health check")
async def health_check(request: web.Request) -> web.Response:
    monitor = request.app[VIEWS].health()
    if monitor is None:
        return error(request, 404, 'no health monitor is running (add a worker = "health" child)')
    return reply(request, await monitor.check_now(), 200, HEALTH_JSON)


def build_app(
    views: Views, controls: Controls, hosts: set[str] | None, redact: Callable[[Any], Any] = lambda doc: doc
) -> web.Application:
    """The admin app. ``hosts``: the Host header values accepted (None: no check, e.g. a unix socket);
    ``redact`` cleans a response document's free text (the daemon's redactor; ids, paths and states are kept)."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[VIEWS] = views
    app[CONTROLS] = controls
    app[REDACT] = redact
    app[_HOSTS] = hosts
    app[_BACKGROUND] = set()
    app[_GATE] = PerTurn(HEAVY_PER_TURN)
    app[STREAMS] = Streams(lambda: views.journal, error)
    app.router.add_get("/", root)
    app.router.add_get("/status", status)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/children/{path:.+}/logs", logs)
    app.router.add_get("/children/{path:.+}/exits", exits)
    app.router.add_post("/children/{path:.+}/{action:(?!(?:logs|exits)$)[^/]+}", child_action)  # else a 405
    app.router.add_get("/events", events)
    UI.add_routes(app)
    app.router.add_post("/reload", reload)
    app.router.add_get("/cluster", cluster)
    app.router.add_post("/cluster/move", cluster_move)
    app.router.add_post("/health/check", health_check)
    app.router.add_get("/alerts", alerts)
    app.router.add_post("/alerts/{name}/test", alert_test)
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
        self,
        views: Views,
        controls: Controls,
        address: Address,
        *,
        allow_remote: bool = False,
        redact: Callable[[Any], Any] = lambda doc: doc,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.address = address
        self.limits = limits if limits is not None else ConnectionLimits()
        hosts = None if allow_remote else address.allowed_hosts()
        self.app = build_app(views, controls, hosts, redact)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)

    async def start(self) -> None:
        await self._runner.setup()
        address = self.address
        if address.unix:
            site = unix_site(self._runner, address.path, self.limits)
            os.chmod(address.path, 0o660)
        else:
            site = tcp_site(self._runner, address.host, address.port, self.limits)
        await site.start()

    async def stop(self) -> None:
        await self._runner.cleanup()
