"""The framed protocol of an isolated subtree's control channel: JSON frames only, errors that cross as themselves,
events that cross with their path under the isolated supervisor's, and a peer that breaks the protocol or goes
away fails what waits instead of hanging it."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from mcp_supervisor.core import (
    CalleeExited,
    CallTimeout,
    ChildExited,
    ExitReason,
    LoopBlocked,
    NotRunning,
    SpecWarning,
)
from mcp_supervisor.daemon.link import MAX_FRAME, Link, call_over, encode, error_of, event_doc, event_of


def test_only_json_crosses_and_the_sender_is_told_why() -> None:
    with pytest.raises(TypeError, match="must be JSON"):
        encode({"msg": {1, 2}})
    with pytest.raises(TypeError, match="must be JSON"):
        encode({"msg": float("nan")})
    frame = encode({"msg": ("a", 1)})
    assert frame[4:] == b'{"msg":["a",1]}' and struct.unpack(">I", frame[:4])[0] == len(frame) - 4


def test_errors_cross_as_themselves_and_others_as_call_errors_naming_them() -> None:
    assert isinstance(error_of({"error": "NotRunning", "message": "x"}), NotRunning)
    assert isinstance(error_of({"error": "CallTimeout", "message": "x"}), CallTimeout)
    other = error_of({"error": "ZeroDivisionError", "message": "division by zero"})
    assert type(other).__name__ == "CallError" and str(other) == "ZeroDivisionError: division by zero"


def test_events_cross_under_the_isolated_supervisors_path() -> None:
    ev = ChildExited(path="w", kind="worker", reason=ExitReason("abnormal", "boom", code=1), at=12.5)
    back = event_of(event_doc(ev, "jobs"))
    assert back == ChildExited(path="jobs/w", kind="worker", reason=ExitReason("abnormal", "boom", code=1), at=12.5)
    blocked = LoopBlocked(path="w", duration_s=0.5, task="t", frames=("a.py:1 in f",), at=1.0)
    assert event_of(event_doc(blocked, "jobs")) == LoopBlocked(path="jobs/w", duration_s=0.5, task="t",
                                                               frames=("a.py:1 in f",), at=1.0)  # fmt: skip
    assert event_of({"type": "os.system", "path": "x"}) is None  # only the known event classes, never a name
    assert event_of({"type": "ChildExited", "path": "x"}) is None  # missing fields: dropped, not raised
    assert event_doc(SpecWarning(path="", message="m"), "jobs") is not None


async def pair(requests: Any = None) -> tuple[Link, Link, list[asyncio.Task[None]]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    async def answer(doc: dict[str, Any]) -> Any:
        if doc["op"] == "boom":
            raise NotRunning("nothing running as 'x'")
        if doc["op"] == "slow" or doc.get("to") == "slow":
            await asyncio.sleep(30)
        return doc["msg"]

    left = await Link.open(a, requests or answer, lambda doc: None)
    right = await Link.open(b, answer, lambda doc: None)
    return left, right, [asyncio.ensure_future(left.run()), asyncio.ensure_future(right.run())]


async def test_requests_answer_with_the_value_or_the_peers_error() -> None:
    left, right, tasks = await pair()
    assert await left.request({"op": "echo", "msg": {"k": [1, "two"]}}) == {"k": [1, "two"]}
    with pytest.raises(NotRunning, match="nothing running as 'x'"):
        await left.request({"op": "boom"})
    with pytest.raises(CallTimeout, match=r"no reply within 0\.2s; a late reply will be dropped"):
        await call_over(left, "slow", "x", 0.2)  # the local call's timeout and message
    right.close()  # the peer goes away: what waits fails at once
    with pytest.raises(CalleeExited):
        await asyncio.wait_for(left.request({"op": "slow", "msg": 1}), 10)
    for t in tasks:
        t.cancel()


async def test_a_peer_that_breaks_the_protocol_closes_the_channel() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    link = await Link.open(a, lambda doc: asyncio.sleep(0), lambda doc: None)
    b.sendall(struct.pack(">I", MAX_FRAME + 1))  # a frame too big to be ours
    await asyncio.wait_for(link.run(), 10)
    assert link.closed
    with pytest.raises(CalleeExited):
        await link.request({"op": "x"})
    b.close()
