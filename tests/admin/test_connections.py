"""Slow and idle clients cannot exhaust the admin port; malformed requests are answered without an echo."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from mcp_supervisor.admin import AdminServer, TreePort
from mcp_supervisor.admin.http import ConnectionLimits
from mcp_supervisor.core import Address, SupervisorSpec, Tree
from mcp_supervisor.testing import free_port, until

pytestmark = pytest.mark.realtime


class _Log:
    def info(self, *a: Any, **k: Any) -> None: ...


@contextlib.asynccontextmanager
async def admin_port(limits: ConnectionLimits) -> AsyncIterator[tuple[str, int]]:
    tree = Tree(SupervisorSpec(id="root"))
    async with tree:
        state = TreePort(tree=tree, log=_Log())
        port = free_port()
        server = AdminServer(state, state, Address.parse(f"127.0.0.1:{port}"), limits=limits)
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
    limits = ConnectionLimits(max_connections=256, header_timeout=1.0)
    async with admin_port(limits) as (host, port), aiohttp.ClientSession() as http:
        clients = [asyncio.ensure_future(slowloris(host, port, 0.05)) for _ in range(200)]
        await until(lambda: len(limits.open) >= 200, what="every slow client connected")
        for _ in range(5):  # a probe is served at once while 200 slow clients hold connections
            t0 = time.monotonic()
            async with http.get(f"http://{host}:{port}/livez", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 200
            assert time.monotonic() - t0 < 0.5
        outcomes = await asyncio.gather(*clients)
    assert outcomes == ["closed by the server"] * 200  # none got to finish its slow request
    assert limits.most <= limits.max_connections and limits.timed_out > 0


async def test_at_the_cap_newcomers_wait_in_the_backlog_instead_of_evicting_a_client() -> None:
    limits = ConnectionLimits(max_connections=4, header_timeout=30.0)
    async with admin_port(limits) as (host, port):
        held = [await asyncio.open_connection(host, port) for _ in range(4)]
        await until(lambda: len(limits.open) == 4, what="four connections open")
        waiting = asyncio.ensure_future(asyncio.open_connection(host, port))  # completes: the kernel's backlog
        reader, writer = await asyncio.wait_for(waiting, 10)
        writer.write(f"GET /livez HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        for r, w in held:  # the four are served, none evicted for the newcomer
            w.write(f"GET /livez HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
        assert not answer.done() and limits.most == 4  # still waiting to be accepted
        held[0][1].close()  # one leaves: the newcomer is accepted and answered
        assert (await asyncio.wait_for(answer, 10)).startswith(b"HTTP/1.1 200")
        for _, w in held[1:]:
            w.close()
        writer.close()


async def test_a_connection_is_closed_after_its_maximum_of_requests() -> None:
    limits = ConnectionLimits(max_requests=3)
    async with admin_port(limits) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        heads = []
        for _ in range(3):
            writer.write(f"GET /livez HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            heads.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
        assert b"Connection: close" in heads[2] and all(b"Connection: close" not in h for h in heads[:2])
        writer.close()


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
