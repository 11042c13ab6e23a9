"""The journal: numbered events with gaps, output rings bounded by lines and bytes, redaction before keeping."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from mcp_supervisor.admin.journal import Journal, LogRing, ReloadResult, event_dict, matches
from mcp_supervisor.config.redact import Redactor
from mcp_supervisor.core import ChildExited, ChildStarted, EventBus, ExitReason, ProcessOutput
from mcp_supervisor.testing import until


def test_a_ring_keeps_the_last_lines_within_both_bounds() -> None:
    ring = LogRing(max_lines=3, max_bytes=1000)
    for i in range(10):
        ring.append("stdout", 7, f"line {i}")
    assert [line.text for line in ring.tail(10)] == ["line 7", "line 8", "line 9"]
    assert ring.dropped == 7 and ring.last_seq == 10 and ring.missed_after(0) == 7 and ring.missed_after(5) == 2
    ring = LogRing(max_lines=100, max_bytes=25)  # each line costs its length + 1
    for i in range(10):
        ring.append("stderr", None, f"{i:09d}")
    assert [line.text for line in ring.tail(10)] == ["000000008", "000000009"] and ring.bytes == 20
    ring.append("stdout", None, "x" * 100)  # a line over the byte bound alone: not kept, the ring stays valid
    assert len(ring) == 0 and ring.bytes == 0 and ring.last_seq == 11 and ring.missed_after(10) == 1


def test_after_and_resize() -> None:
    ring = LogRing(max_lines=10, max_bytes=10_000)
    for i in range(6):
        ring.append("stdout", 1, str(i))
    assert [line.seq for line in ring.after(4)] == [5, 6]
    ring.resize(2, 10_000)
    assert [line.text for line in ring.tail(10)] == ["4", "5"] and ring.missed_after(3) == 1


def test_events_are_numbered_and_a_reader_that_fell_behind_learns_how_many_it_missed() -> None:
    journal = Journal(capacity=5)
    for i in range(12):
        journal.record(ChildStarted(path=f"c{i}", kind="worker", restarts=i))
    assert journal.last_id == 12
    missed, docs = journal.events_after(3)
    ids = [f"{journal.boot}-{n}" for n in (8, 9, 10, 11, 12)]
    assert missed == 4 and [d["id"] for d in docs] == ids  # 4..7 are gone
    assert journal.events_after(10) == (0, [journal.events_after(10)[1][0], journal.events_after(10)[1][1]])
    assert journal.events_after(12) == (0, [])
    assert journal.events_after(0, limit=2)[1][0]["id"] == ids[0]
    assert journal.resume(ids[0]).after == 8 and journal.resume("8").after == 8
    assert journal.resume("another-8").restarted and journal.resume("another-8").after == 0


def test_lines_are_numbered_across_rings_so_a_subtree_merges_in_order() -> None:
    journal = Journal()
    journal.ring("s/a").append("stdout", 1, "first")
    journal.ring("s/b").append("stdout", 2, "second")
    journal.ring("sb").append("stdout", 3, "not below s")
    journal.ring("s/a").append("stdout", 1, "third")
    under = journal.rings_under("s")
    assert {r.path for r in under} == {"s/a", "s/b"}
    lines = sorted((line for r in under for line in r.tail(10)), key=lambda x: x.seq)
    assert [(x.path, x.text) for x in lines] == [("s/a", "first"), ("s/b", "second"), ("s/a", "third")]


def test_events_are_plain_data_and_redacted() -> None:
    redactor = Redactor({"hunter2-secret"})
    journal = Journal(redact=redactor.redact_value)
    journal.record(ChildExited(path="db", kind="worker", reason=ExitReason("abnormal", "auth hunter2-secret failed")))
    journal.record(ProcessOutput(path="p", stream="stdout", line="password=hunter2-secret", pid=42))
    journal.record(ReloadResult(path="", ok=True, changes=(("a", "added"),)))
    _, (exited, output, reload) = journal.events_after(0)
    assert exited["type"] == "ChildExited" and exited["reason"] == {
        "kind": "abnormal",
        "detail": "auth [REDACTED] failed",
    }
    assert output["line"] == "password=[REDACTED]" and output["path"] == "p"
    assert reload["changes"] == [["a", "added"]] and reload["ok"] is True
    (line,) = journal.ring("p").tail(5)
    assert line.text == "password=[REDACTED]" and line.pid == 42 and line.stream == "stdout"
    assert event_dict(ChildStarted(path="x", kind="worker"))["type"] == "ChildStarted"


def test_path_filters() -> None:
    assert matches({"path": "edge/proxy"}, ["edge"]) and matches({"path": "edge"}, ["edge/"])
    assert not matches({"path": "edgeways"}, ["edge"]) and matches({"path": "x"}, [])


async def test_readers_are_woken_and_lines_from_other_threads_arrive_on_the_loop() -> None:
    journal = Journal()
    bus = EventBus()
    pump = asyncio.ensure_future(journal.pump(bus))
    waiter = asyncio.ensure_future(journal.changed())
    await asyncio.sleep(0)  # a yield, not a wait: the waiter starts waiting before anything is recorded
    bus.emit(ChildStarted(path="a", kind="worker"))
    await asyncio.wait_for(waiter, 10)  # a hang guard: it is woken by the record
    assert waiter.done() and not waiter.cancelled() and waiter.exception() is None
    thread = threading.Thread(target=journal.log_line, args=("a", "info", "from a thread"))
    thread.start()
    thread.join()
    texts = await until(lambda: [line.text for line in journal.ring("a").tail(5)])
    assert texts == ["from a thread"]
    pump.cancel()


async def test_one_reader_giving_up_does_not_cancel_the_others() -> None:
    journal = Journal()
    impatient = asyncio.ensure_future(asyncio.wait_for(journal.changed(), 0.01))
    patient = asyncio.ensure_future(journal.changed())
    with contextlib.suppress(TimeoutError):
        await impatient
    await asyncio.sleep(0)
    assert not patient.done()  # still waiting, not cancelled with the other
    journal.record(ChildStarted(path="a", kind="worker"))
    await asyncio.wait_for(patient, 10)


async def test_the_pump_subscribes_before_its_task_first_runs() -> None:
    journal, bus = Journal(), EventBus()
    drain = journal.pump(bus)  # subscribed here...
    bus.emit(ChildStarted(path="early", kind="worker"))  # ...so an event emitted before the task runs is kept
    task = asyncio.ensure_future(drain)
    await until(lambda: journal.last_id == 1)
    assert journal.events_after(0)[1][0]["path"] == "early"
    task.cancel()
