"""The fault-injecting proxy the fleet tests use breaks a link the way a network does: an echo server behind it
answers through a clean link, late through a slow one, never through a blackhole (no RST, no FIN: the read times
out), through a new connection but not an old one when half-open, and with an RST when reset."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from mcp_supervisor.testing.faults import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(ConnectionResetError):  # the proxy's reset reaches the echo server too
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with FaultProxy(server.server_address[1]) as p:
        yield p
    server.shutdown()
    server.server_close()


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def echo(s: socket.socket, data: bytes = b"ping") -> bytes:
    s.sendall(data)
    return s.recv(65536)


def unanswered(s: socket.socket) -> None:
    """Nothing comes back within half a second: neither data nor EOF nor RST."""
    s.settimeout(0.5)
    with pytest.raises(TimeoutError):
        echo(s)
    s.settimeout(10)


def test_a_clean_link_passes_bytes(proxy: FaultProxy) -> None:
    with connect(proxy) as s:
        assert echo(s) == b"ping"


def test_a_slow_link_delays_each_direction(proxy: FaultProxy) -> None:
    proxy.delay(0.3)
    with connect(proxy) as s:
        t0 = time.monotonic()
        assert echo(s) == b"ping"
        assert time.monotonic() - t0 >= 0.6  # 0.3 s each way


def test_a_blackhole_answers_nothing_and_closes_nothing(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        assert echo(old) == b"ping"
        proxy.blackhole()
        unanswered(old)
        with connect(proxy) as new:  # the handshake completes (the kernel's), nothing more
            unanswered(new)
        proxy.heal()
        with pytest.raises(ConnectionResetError):
            old.recv(10)  # a healed link resets what the blackhole left silent
    with connect(proxy) as s:
        assert echo(s) == b"ping"


def test_half_open_silences_the_old_connection_only(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        assert echo(old) == b"ping"
        proxy.half_open()
        unanswered(old)
        with connect(proxy) as new:
            assert echo(new) == b"ping"


def test_reset_aborts_open_and_new_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        assert echo(old) == b"ping"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            echo(old)
        with pytest.raises((ConnectionResetError, BrokenPipeError)), connect(proxy) as new:  # (even at connect)
            echo(new)


def test_a_trickle_is_bounded_by_its_rate(proxy: FaultProxy) -> None:
    proxy.trickle(20_000)
    with connect(proxy) as s:
        t0 = time.monotonic()
        s.sendall(b"x" * 10_000)
        got = b""
        while len(got) < 10_000:
            got += s.recv(65536)
        assert time.monotonic() - t0 >= 0.4  # 10 kB at 20 kB/s: half a second each way, pipelined
