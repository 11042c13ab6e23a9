"""The admin port's connections, hardened: slow or idle clients cannot exhaust it, a flood is served, not
churned, and malformed requests leak nothing.

aiohttp has no deadline for a request's headers, so 200 clients sending one byte a second would hold 200
connections forever (slowloris). Here each connection has a deadline to deliver its headers — and, once a response
is sent, to start the next request — after which it is closed. The number of open connections is capped
(:data:`MAX_CONNECTIONS`, or half the descriptor limit); at the cap the port stops accepting: newcomers wait in the
listen backlog (sized for it) until a connection closes, instead of a live client being evicted for each newcomer
(which, under a flood of keep-alive clients, turns every request into a reconnect). A connection serves at most
:data:`MAX_REQUESTS` requests (nginx's ``keepalive_requests``), so that those waiting get their turn.

A request aiohttp cannot parse is answered with a short 400 and logged as one line naming the peer and the kind
of error — never with the raw header bytes (aiohttp's default echoes them into the response and dumps a traceback
holding them, ``Authorization`` included).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

MAX_CONNECTIONS = 1024
BACKLOG = 1024  # the kernel's queue of connections waiting to be accepted (capped by net.core.somaxconn)
MAX_REQUESTS = 1000  # requests served on one connection before it is closed (the client reconnects)
HEADER_TIMEOUT = 5.0  # seconds to deliver a request's headers; also how long a kept-alive connection may idle
BODY_TIMEOUT = 10.0  # seconds to deliver a request's body (bodies are at most 16 KiB)

_LOG = logging.getLogger("mcp_supervisor.admin.http")


def default_max_connections() -> int:
    """:data:`MAX_CONNECTIONS`, or half the daemon's descriptor limit when that is less (the rest is for children's
    pipes, pidfds, database connections...)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(16, min(MAX_CONNECTIONS, soft // 2))


class ConnectionLimits:
    """The open connections of one admin port: how many, and when there is room for another."""

    def __init__(
        self,
        max_connections: int | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        max_requests: int = MAX_REQUESTS,
    ) -> None:
        self.max_connections = max_connections if max_connections is not None else default_max_connections()
        self.header_timeout = header_timeout
        self.max_requests = max_requests
        self.open: set[GuardedHandler] = set()
        self.pending = 0  # accepted, not yet open
        self.most = 0  # the most open at once
        self.timed_out = 0
        self._room: asyncio.Event | None = None

    @property
    def taken(self) -> int:
        """Connections open, and accepted ones being set up."""
        return len(self.open) + self.pending

    async def room(self) -> None:
        """Until fewer than ``max_connections`` are taken."""
        while self.taken >= self.max_connections:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def admit(self, handler: GuardedHandler) -> None:
        self.open.add(handler)
        self.most = max(self.most, len(self.open))

    def gone(self, handler: GuardedHandler | None) -> None:
        if handler is not None:
            self.open.discard(handler)
        if self._room is not None and self.taken < self.max_connections:
            self._room.set()


class GuardedHandler(web.RequestHandler):
    """aiohttp's request handler with a header deadline, the connection cap, and a quiet answer to bad requests."""

    def __init__(
        self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, limits: ConnectionLimits, **kwargs: Any
    ):
        super().__init__(manager, loop=loop, **kwargs)
        self._limits = limits
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._limits.admit(self)
        self._served = 0
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._limits.gone(self)
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(self._limits.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self._limits.timed_out += 1
        self.close_now()

    def close_now(self) -> None:
        self._disarm()
        self.force_close()

    # called by the admin app's middleware around each request it dispatches
    def request_started(self) -> None:
        self._disarm()

    def request_finished(self, response: web.StreamResponse | None = None) -> None:
        """The request is answered: the next one must start within the deadline; after ``max_requests`` the
        response says ``Connection: close``."""
        self._served += 1
        if response is not None and self._served >= self._limits.max_requests:
            response.force_close()
        self._arm()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400:  # our own failure: logged with its traceback (through the redacting log pipeline)
            return super().handle_error(request, status, exc, message)
        what = type(exc).__name__ if exc is not None else "bad request"
        if isinstance(exc, HttpProcessingError) and exc.message:
            what = exc.message.split("\n", 1)[0].strip().rstrip(":")[:100] or what  # the kind, never the bytes
        _LOG.warning("malformed request from %s: %s", request.remote or "unix socket", what)
        resp = web.Response(status=400, text=f"400 Bad Request: malformed request ({what})\n")
        resp.force_close()
        return resp


def _factory(runner: web.BaseRunner, limits: ConnectionLimits) -> Any:
    server = runner.server
    assert server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()

    def make() -> GuardedHandler:
        return GuardedHandler(
            server,
            loop=loop,
            limits=limits,
            keepalive_timeout=limits.header_timeout,
            access_log=None,
            logger=_LOG,
            max_line_size=8190,
            max_field_size=8190,
            lingering_time=1.0,
        )

    return make


class GuardedSite(web.BaseSite):
    """A listening socket served by our own accept loop: it accepts only while there is room under the cap, so at
    the cap newcomers wait in the kernel's backlog (on asyncio and uvloop alike)."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, limits: ConnectionLimits, name: str) -> None:
        super().__init__(runner)
        self._sock = sock
        self._limits = limits
        self._name = name
        self._accepting: asyncio.Task[None] | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept(), name=f"accept {self._name}")

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        factory = _factory(self._runner, self._limits)
        while True:
            await self._limits.room()
            conns: list[socket.socket] = []
            try:
                conns.append((await loop.sock_accept(self._sock))[0])
                self._limits.pending += 1
                while self._limits.taken < self._limits.max_connections:
                    conns.append(self._sock.accept()[0])  # the rest of the backlog, in one go
                    self._limits.pending += 1
            except BlockingIOError:
                pass
            except OSError as e:  # EMFILE and friends: wait a moment rather than spin
                _LOG.warning("admin port: cannot accept a connection: %s", e)
                await asyncio.sleep(0.1)
            for conn in conns:  # set up together: one loop turn for the whole batch, not one each
                conn.setblocking(False)
                task = loop.create_task(self._connect(loop, factory, conn, self._limits))
                self._connecting.add(task)
                task.add_done_callback(self._connecting.discard)

    @staticmethod
    async def _connect(
        loop: asyncio.AbstractEventLoop, factory: Any, conn: socket.socket, limits: ConnectionLimits
    ) -> None:
        try:
            await loop.connect_accepted_socket(factory, conn)  # admitted (open) by then
        except OSError:
            conn.close()
        finally:
            limits.pending -= 1
            limits.gone(None)  # room again, if this one did not make it

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self._sock.close()
        self._runner._unreg_site(self)  # noqa: SLF001 - aiohttp's own sites do exactly this


def tcp_site(runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits) -> GuardedSite:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return GuardedSite(runner, sock, limits, f"http://{host}:{port}")


def unix_site(runner: web.BaseRunner, path: str, limits: ConnectionLimits) -> GuardedSite:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return GuardedSite(runner, sock, limits, f"unix:{path}")
