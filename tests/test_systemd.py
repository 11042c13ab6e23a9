"""sd_notify: the protocol, and that a receiver that never reads cannot freeze the daemon."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_supervisor.daemon.systemd import MAX_VALUE, Notifier

pytestmark = pytest.mark.realtime


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        yield sock


def test_messages_arrive_and_the_environment_is_scrubbed(receiver: socket.socket) -> None:
    n = Notifier()
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ and "WATCHDOG_PID" not in os.environ
    assert n.watchdog_usec == 2_000_000
    n.ready("up\nand running")
    assert receiver.recv(4096).decode() == "READY=1\nSTATUS=up and running"
    n.status("x" * 10_000)
    status = receiver.recv(65536).decode()
    assert status.startswith("STATUS=xxx") and len(status) == len("STATUS=") + MAX_VALUE
    n.close()


def test_a_receiver_that_never_reads_cannot_block_the_sender(receiver: socket.socket) -> None:
    n = Notifier()
    began = time.monotonic()
    for _ in range(1000):
        n.send(WATCHDOG=1)
    assert time.monotonic() - began < 5  # a blocking send would hang here at the 11th datagram
    assert n.dropped > 0
    receiver.setblocking(False)
    queued = 0
    while True:
        try:
            receiver.recv(64)
        except BlockingIOError:
            break
        queued += 1
    assert queued + n.dropped == 1000
    n.close()
