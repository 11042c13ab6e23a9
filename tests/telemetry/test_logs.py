"""Logging never blocks the event loop, and a crash loop cannot flood the log."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from mcp_supervisor.telemetry.events import Quieter
from mcp_supervisor.telemetry.logs import LineWriter


def test_the_quieter_holds_back_a_crash_loop_and_summarizes_each_window() -> None:
    now = [0.0]
    q = Quieter(burst=3, window=10.0, clock=lambda: now[0])
    assert [q.allow("a") for _ in range(5)] == [True, True, True, False, False]
    assert q.allow("b")  # each child has its own budget
    assert q.due() == []
    now[0] = 10.0
    assert q.allow("a")  # a new window; the old one's held-back lines are reported
    assert q.due() == [("a", 2)]
    now[0] = 25.0
    assert q.due() == []  # b's window ended with nothing held back; a's second window too


def test_the_line_writer_never_blocks_drops_what_does_not_fit_and_says_so() -> None:
    r, w = os.pipe()
    os.set_blocking(w, True)
    stream = os.fdopen(w, "w")
    writer = LineWriter(stream, capacity=100)
    began = time.monotonic()
    line = "x" * 1000 + "\n"
    for _ in range(1000):  # 1 MB into a 64 KiB pipe that nobody reads
        writer.write(line)
    assert time.monotonic() - began < 5  # a blocking write would hang here
    assert writer.dropped > 0
    got: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(r, 65536):
            got.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    refused = 0  # the queue may still be full until the writer thread gets going: "last" is refused, counted
    deadline = time.monotonic() + 10
    while writer.write("last\n") == 0:
        refused += 1
        assert time.monotonic() < deadline, "the writer never made room"
        time.sleep(0.001)  # polling a condition (room in the queue) with a deadline
    writer.close(timeout=10)
    stream.close()
    reader.join(10)
    os.close(r)
    text = b"".join(got).decode()
    assert f"{writer.dropped} log lines were dropped" in text
    assert text.endswith("last\n")
    kept: Any = text.count(line)
    assert kept + writer.dropped - refused == 1000


def test_writes_keep_their_order() -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    writer = LineWriter(stream)
    for i in range(500):
        writer.write(json.dumps({"n": i}) + "\n")
    writer.close(timeout=10)
    stream.close()
    with os.fdopen(r) as f:
        assert [json.loads(line)["n"] for line in f] == list(range(500))
