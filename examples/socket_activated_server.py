"""A small real HTTP server (an example, and what the tests and benchmarks run). It takes its listening socket by
systemd socket activation (``LISTEN_FDS``, checked against ``LISTEN_PID``) — as a child with ``sockets = ["web"]``
gets it — or binds ``--port`` itself; answers ``GET /`` with its pid and ``GET /healthz`` with 200 (503 while the
file ``--sick`` names exists); and on SIGTERM stops accepting, finishes the request in hand and exits 0 — what a
well-behaved server does, so that a restart loses nothing already accepted.

``--allocate N`` holds N MiB of touched memory once started (for max_memory tests); ``--ready-file`` is created
once it serves and removed at a clean exit (a readiness check for the tests).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys

SD_LISTEN_FDS_START = 3


def activated() -> list[socket.socket]:
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    return [socket.socket(fileno=SD_LISTEN_FDS_START + i) for i in range(count)]


def answer(conn: socket.socket, sick: str | None) -> None:
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    target = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b"/"
    if target == b"/healthz" and sick is not None and os.path.exists(sick):
        status, body = b"503 Service Unavailable", b"sick"
    else:
        status, body = b"200 OK", str(os.getpid()).encode()
    conn.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def main() -> int:  # noqa: C901 - the socket-activation protocol, checked step by step as a reader would
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--sick")
    parser.add_argument("--allocate", type=int, default=0)
    parser.add_argument("--ready-file", help="created once serving, removed at a clean exit")
    args = parser.parse_args()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    socks = activated()
    if not socks:
        if args.port is None:
            print("no LISTEN_FDS and no --port", file=sys.stderr)
            return 2
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", args.port))
        s.listen(128)
        socks = [s]
    for s in socks:
        s.setblocking(False)  # several instances share one socket: whoever is first takes a connection
    hog = bytearray(args.allocate * 2**20)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    print(f"serving pid={os.getpid()} fds={[s.fileno() for s in socks]}", flush=True)
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write(str(os.getpid()))
    while not stopping:
        try:
            ready, _, _ = select.select(socks, [], [], 0.05)
        except InterruptedError:
            continue
        for s in ready:
            if stopping:
                break
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another instance took it
            with conn:
                try:
                    answer(conn, args.sick)
                except OSError:
                    pass
    if args.ready_file:
        os.unlink(args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
