"""The admin port's connections, hardened: slow or idle clients cannot exhaust it, malformed requests leak nothing.

aiohttp has no deadline for a request's headers, so 200 clients sending one byte a second would hold 200
connections forever (slowloris). Here each connection has a deadline to deliver its headers — and, once a response
is sent, to start the next request — after which it is closed; the number of open connections is capped, and at the
cap the longest-idle connection is evicted for the newcomer (so ``/livez`` stays reachable however many idle
connections an attacker opens); only when every connection is busy is a newcomer refused.

A request aiohttp cannot parse is answered with a short 400 and logged as one line naming the peer and the kind
of error — never with the raw header bytes (aiohttp's default echoes them into the response and dumps a traceback
holding them, ``Authorization`` included).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

MAX_CONNECTIONS = 64
HEADER_TIMEOUT = 5.0  # seconds to deliver a request's headers; also how long a kept-alive connection may idle
BODY_TIMEOUT = 10.0  # seconds to deliver a request's body (bodies are at most 16 KiB)

_LOG = logging.getLogger("mcp_supervisor.admin.http")


class ConnectionLimits:
    """The open connections of one admin port, oldest first, each idle (between requests) or busy."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: dict[GuardedHandler, bool] = {}  # handler -> idle
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def admit(self, handler: GuardedHandler) -> bool:
        if len(self.open) >= self.max_connections:
            victim = next((h for h, idle in self.open.items() if idle), None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            victim.close_now()
            self.open.pop(victim, None)
        self.open[handler] = True
        return True

    def set_idle(self, handler: GuardedHandler, idle: bool) -> None:
        if handler in self.open:
            self.open.pop(handler)
            self.open[handler] = idle  # to the end: the most recently active

    def gone(self, handler: GuardedHandler) -> None:
        self.open.pop(handler, None)


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
        if not self._limits.admit(self):
            self.close_now()
            return
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
        self._limits.set_idle(self, False)

    def request_finished(self) -> None:
        self._limits.set_idle(self, True)
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


class GuardedTCPSite(web.TCPSite):
    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            _factory(self._runner, self._limits), self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class GuardedUnixSite(web.UnixSite):
    def __init__(self, runner: web.BaseRunner, path: str, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(runner, path, **kwargs)
        self._limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            _factory(self._runner, self._limits), os.fspath(self._path), backlog=self._backlog
        )
