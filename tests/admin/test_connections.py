"""Slow and idle clients cannot exhaust the admin port; malformed requests are answered without an echo."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from mcp_supervisor.admin import AdminServer, AdminState
from mcp_supervisor.admin.http import ConnectionLimits
from mcp_supervisor.core import SupervisorSpec, Tree
from tests.daemon_helpers import free_port

pytestmark = pytest.mark.realtime


class _Log:
    def info(self, *a: Any, **k: Any) -> None: ...


@contextlib.asynccontextmanager
async def admin_port(limits: ConnectionLimits) -> AsyncIterator[tuple[str, int]]:
    tree = Tree(SupervisorSpec(id="root"))
    async with tree:

        async def reload() -> dict[str, Any]:
            return {"ok": True, "changes": []}

        state = AdminState(tree=tree, log=_Log(), metrics=lambda: (b"", "text/plain"), reload=reload)
        port = free_port()
        server = AdminServer(state, f"127.0.0.1:{port}", limits=limits)
        await server.start()
        try:
            yield "127.0.0.1", port
        finally:
            await server.stop()


async def slowloris(host: str, port: int, gap: float) -> str:
    """Send a request's headers one byte at a time; how did the server treat us?"""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for byte in f"GET /status HTTP/1.1\r\nHost: {host}:{port}\r\nX-Pad: {'p' * 60}\r\n\r\n".encode():
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), gap) == b"":
                    return "closed by the server"
        return "answered"
    except ConnectionError:
        return "closed by the server"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_200_slowloris_clients_are_cut_off_and_livez_keeps_answering() -> None:
    limits = ConnectionLimits(max_connections=64, header_timeout=1.0)
    async with admin_port(limits) as (host, port), aiohttp.ClientSession() as http:
        clients = [asyncio.ensure_future(slowloris(host, port, 0.05)) for _ in range(200)]
        most = 0
        for _ in range(20):
            async with http.get(f"http://{host}:{port}/livez", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 200
            most = max(most, len(limits.open))
            await asyncio.sleep(0.1)
        outcomes = await asyncio.gather(*clients)
    assert outcomes == ["closed by the server"] * 200  # none got to finish its slow request
    assert most <= limits.max_connections
    assert limits.evicted > 0 and limits.timed_out > 0


async def test_an_idle_kept_alive_connection_is_closed_after_the_idle_deadline() -> None:
    limits = ConnectionLimits(header_timeout=0.5)
    async with admin_port(limits) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /livez HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        rest = await asyncio.wait_for(reader.read(), 10)  # the body, then EOF once the idle deadline passes
        assert rest.endswith(b"}")
        writer.close()
    assert limits.timed_out == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret-bytes\x00\r\n\r\n",
        b"GET /\x7fsecret-bytes HTTP/1.1\r\n\r\n",
        b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: secret-bytes\r\n\r\n",
    ],
)
async def test_a_malformed_request_gets_a_short_400_without_its_bytes(raw: bytes) -> None:
    async with admin_port(ConnectionLimits()) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer.split(b" ")[1] == b"400"
    assert b"secret-bytes" not in answer and b"malformed request" in answer
