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

from mcp_supervisor.admin.journal import Journal
from mcp_supervisor.admin.seams import TreePort
from mcp_supervisor.admin.server import STREAMS, build_app
from mcp_supervisor.admin.streams import Streams
from mcp_supervisor.core import Address, ChildContext, ProcessSpec, SupervisorFlags, SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.testing import until


async def idle(ctx: ChildContext[Any]) -> None:
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
        state = TreePort(tree=tree, log=Audit(), token="a-token-of-sixteen+", journal=journal)
        p = unused_port()
        app = build_app(state, state, Address.parse(f"127.0.0.1:{p}").allowed_hosts())
        async with TestClient(TestServer(app, host="127.0.0.1", port=p)) as client:
            yield Port(client, tree, journal, app[STREAMS], p)
        pump.cancel()


def number(eid: str | None) -> int:
    """The number in an id given out (``"<boot>-<number>"``)."""
    assert eid is not None
    return int(eid.rpartition("-")[2])


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
    assert [number(d["id"]) for d in docs] == sorted(number(d["id"]) for d in docs)
    assert {d["id"].rpartition("-")[0] for d in docs} == {port.journal.boot}


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
    assert number(again[0][0]) > number(last) and again[1][2]["restarts"] == 2


async def test_a_follower_of_an_earlier_incarnation_gets_a_gap_and_this_ones_backlog(port: Port) -> None:
    """Its id's boot is not this daemon's: the numbers start over here, so 'after N' would be silence."""
    await restart(port, "a")
    headers = {"Accept": "text/event-stream", "Last-Event-ID": "0ldb00t-999999"}
    async with port.client.get("/events?path=a", headers=headers) as resp:
        gap, *backlog = await sse(resp, 3)
    assert gap[1] == "gap" and gap[2] == {"missed": 0, "restarted": True}
    assert [e[1] for e in backlog] == ["ChildStarted", "ChildExited"]  # from this incarnation's first event
    assert number(backlog[0][0]) <= 2


async def test_the_last_event_id_header_wins_over_the_query_parameter(port: Port) -> None:
    """A browser's EventSource reconnects to the same URL (``last_event_id=0``) and sends the header."""
    await restart(port, "a")
    last = f"{port.journal.boot}-{port.journal.last_id}"
    await restart(port, "a")
    headers = {"Last-Event-ID": last}
    async with port.client.get("/events?follow=1&path=a&last_event_id=0", headers=headers) as resp:
        again = await sse(resp, 2)
    assert [e[1] for e in again] == ["ChildExited", "ChildStarted"] and number(again[0][0]) > number(last)
    assert (await port.client.get("/events?last_event_id=zz-x")).status == 400


async def test_a_reader_behind_the_ring_gets_a_gap_with_the_count(port: Port) -> None:
    start = port.journal.last_id
    await restart(port, "a", 40)  # 80 events into a ring of 50
    async with port.client.get(f"/events?follow=1&last_event_id={start}") as resp:
        (gap, first) = await sse(resp, 2)
    assert gap[1] == "gap" and gap[2]["missed"] >= 30
    assert number(first[0]) == start + gap[2]["missed"] + 1


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
    assert (await port.client.get("/children/talker/logs?format=yaml")).status == 400


async def test_a_supervisors_logs_merge_its_childrens_lines_in_order(port: Port) -> None:
    spec = SupervisorSpec(id="pair", children=[
        ProcessSpec(id="one", command=["sh", "-c", "echo one-a; echo one-b; exec sleep 1000"]),
        ProcessSpec(id="two", command=["sh", "-c", "echo two-a; exec sleep 1000"]),
    ])  # fmt: skip
    await port.tree.start_child("", spec)
    await until(
        lambda: len(port.journal.rings_under("pair")) == 2 and sum(map(len, port.journal.rings_under("pair"))) == 3
    )
    lines = [json.loads(x) for x in (await (await port.client.get("/children/pair/logs")).text()).splitlines()]
    assert sorted((x["path"], x["text"]) for x in lines) == [
        ("pair/one", "one-a"),
        ("pair/one", "one-b"),
        ("pair/two", "two-a"),
    ]
    assert [x["seq"] for x in lines] == sorted(x["seq"] for x in lines)
    text = await (await port.client.get("/children/pair/logs?format=text")).text()
    assert " pair/two stdout[" in text
    async with port.client.get("/children/pair/logs?follow=1&lines=0") as resp:
        await port.tree.restart("pair/two")
        (fresh,) = await sse(resp, 1)
    assert fresh[2]["path"] == "pair/two" and fresh[2]["text"] == "two-a"


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
