"""/events and /children/{path}/logs in process, over a real socket with aiohttp's client, on a real tree:
resuming with Last-Event-ID, gaps after overflow, the stream cap, and a reader that stops reading."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port

from mcp_supervisor.admin.server import STREAMS, AdminState, allowed_hosts, build_app
from mcp_supervisor.admin.streams import Streams
from mcp_supervisor.core import ChildContext, ProcessSpec, SupervisorFlags, SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.journal import Journal
from tests.helpers import until


async def idle(ctx: ChildContext) -> None:
    ctx.started()
    await asyncio.Event().wait()


class Audit:
    def info(self, *a: Any, **kw: Any) -> None:
        pass


@dataclass
class Port:
    client: TestClient[Any, Any]
    tree: Tree
    journal: Journal
    streams: Streams
    port: int


async def sse(resp: aiohttp.ClientResponse, count: int) -> list[tuple[str | None, str, dict[str, Any]]]:
    """The next ``count`` events of an SSE response: (id, event, data)."""
    out: list[tuple[str | None, str, dict[str, Any]]] = []
    eid, name, data = None, "message", ""
    while len(out) < count:
        raw = await asyncio.wait_for(resp.content.readline(), 30)  # a hang guard
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if not line:
            if data:
                out.append((eid, name, json.loads(data)))
            eid, name, data = None, "message", ""
        elif line.startswith("id: "):
            eid = line[4:]
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
    return out


@pytest.fixture
async def port() -> AsyncIterator[Port]:
    spec = SupervisorSpec(id="root", flags=SupervisorFlags(intensity=100_000, period=1), children=[
        WorkerSpec(id="a", run=idle),
        ProcessSpec(id="talker", command=["sh", "-c", 'i=0; while [ $i -lt 5 ]; do echo "line $i"; i=$((i+1)); done; exec sleep 1000']),
    ])  # fmt: skip
    journal = Journal(capacity=50)
    tree = Tree(spec)
    pump = asyncio.ensure_future(journal.pump(tree.bus))  # subscribed before anything starts
    async with tree:
        state = AdminState(tree=tree, log=Audit(), metrics=lambda: (b"", "text/plain"), reload=_no_reload,
                           token="a-token-of-sixteen+", journal=journal)  # fmt: skip
        p = unused_port()
        app = build_app(state, allowed_hosts(f"127.0.0.1:{p}"))
        async with TestClient(TestServer(app, host="127.0.0.1", port=p)) as client:
            yield Port(client, tree, journal, app[STREAMS], p)
        pump.cancel()


async def _no_reload() -> dict[str, Any]:
    return {"ok": True, "changes": []}


async def restart(port: Port, path: str, times: int = 1) -> None:
    for _ in range(times):
        await port.tree.terminate_child(path)
        await port.tree.restart_child(path)


async def test_recent_events_as_json_lines_filtered_by_path(port: Port) -> None:
    await restart(port, "a", 2)
    resp = await port.client.get("/events?path=a&limit=3")
    assert resp.status == 200 and resp.content_type == "application/x-ndjson"
    docs = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert len(docs) == 3 and {d["path"] for d in docs} == {"a"}
    assert [d["id"] for d in docs] == sorted(d["id"] for d in docs)


async def test_a_follower_resumes_with_last_event_id_and_misses_nothing(port: Port) -> None:
    async with port.client.get("/events?follow=1&path=a") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        await restart(port, "a")
        first = await sse(resp, 2)  # ChildExited, ChildStarted
    assert [e[1] for e in first] == ["ChildExited", "ChildStarted"]
    last = first[-1][0]
    await restart(port, "a")  # while disconnected
    async with port.client.get(
        "/events?path=a", headers={"Accept": "text/event-stream", "Last-Event-ID": str(last)}
    ) as resp:
        again = await sse(resp, 2)
    assert [e[1] for e in again] == ["ChildExited", "ChildStarted"]
    assert int(again[0][0] or 0) > int(last or 0) and again[1][2]["restarts"] == 2


async def test_a_reader_behind_the_ring_gets_a_gap_with_the_count(port: Port) -> None:
    start = port.journal.last_id
    await restart(port, "a", 40)  # 80 events into a ring of 50
    async with port.client.get(f"/events?follow=1&last_event_id={start}") as resp:
        (gap, first) = await sse(resp, 2)
    assert gap[1] == "gap" and gap[2]["missed"] >= 30
    assert first[0] is not None and int(first[0]) == start + gap[2]["missed"] + 1


async def test_streams_are_capped(port: Port) -> None:
    port.streams.max_streams = 2
    a = await port.client.get("/events?follow=1")
    b = await port.client.get("/children/talker/logs?follow=1")
    refused = await port.client.get("/events?follow=1")
    assert refused.status == 429 and "at most 2" in (await refused.json())["error"] and refused.headers["Retry-After"]
    a.close()
    await until(lambda: port.streams.open == 1, what="the closed stream to be counted out")
    c = await port.client.get("/events?follow=1")
    assert c.status == 200
    b.close()
    c.close()


async def test_logs_tail_text_and_follow(port: Port) -> None:
    await until(lambda: len(port.journal.ring("talker")) == 5, what="the talker's five lines")
    resp = await port.client.get("/children/talker/logs?lines=2")
    lines = [json.loads(x) for x in (await resp.text()).splitlines()]
    assert [x["text"] for x in lines] == ["line 3", "line 4"] and lines[0]["stream"] == "stdout" and lines[0]["pid"]
    text = await (await port.client.get("/children/talker/logs?lines=1", headers={"Accept": "text/plain"})).text()
    assert text.endswith(" line 4\n") and "stdout[" in text
    async with port.client.get("/children/talker/logs?follow=1&lines=2") as resp:
        got = await sse(resp, 2)
        assert [g[2]["text"] for g in got] == ["line 3", "line 4"]
        old_pid = got[0][2]["pid"]
        await restart(port, "talker")
        fresh = await sse(resp, 5)  # the new incarnation's lines, marked with its pid
    assert [f[2]["text"] for f in fresh] == [f"line {i}" for i in range(5)] and fresh[0][2]["pid"] != old_pid
    assert (await port.client.get("/children/nobody/logs")).status == 404


async def test_a_reader_that_stops_reading_never_slows_the_tree_and_is_closed(port: Port) -> None:
    port.streams.write_timeout = 1.0
    # a raw client that asks for a stream and never reads a byte of it
    sock = socket.create_connection(("127.0.0.1", port.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /events?follow=1 HTTP/1.1\r\nHost: 127.0.0.1:{port.port}\r\n\r\n".encode())
    try:
        await until(lambda: port.streams.open == 1, what="the stalled stream to open")
        # megabytes of output: far more than the socket buffers between the port and the stalled reader
        flood = 'line=$(head -c 60000 /dev/zero | tr "\\0" x); i=0; while [ $i -lt 400 ]; do echo "$line"; i=$((i+1)); done; exec sleep 1000'
        await port.tree.start_child("", ProcessSpec(id="flood", command=["sh", "-c", flood]))
        before = port.tree.child("a").restarts
        for _ in range(100):
            await restart(port, "a")
        assert port.tree.child("a").restarts == before + 100  # the tree went on, however the stream fares
        await until(lambda: port.streams.closed_slow == 1 and port.streams.open == 0, 30, "the stalled stream closed")
        assert (await port.client.get("/status")).status == 200
    finally:
        sock.close()
