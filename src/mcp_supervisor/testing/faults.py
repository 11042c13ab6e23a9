"""A fault-injecting TCP proxy on loopback, for tests of what crosses a network: point a client at
``proxy.port`` instead of the server's, then break the link the way networks break.

- :meth:`FaultProxy.blackhole`: every byte in either direction vanishes, on the open connections and on new ones (a
  new connection is accepted — the kernel completes the handshake — and never hears anything). No RST, no FIN: the
  client's statements hang until its own timeouts, as behind a cut cable or a dropped route.
- :meth:`FaultProxy.half_open`: the open connections go silent as above; new connections work (a peer that
  rebooted or a NAT that forgot the flow: the old session is half-open, a new one is fine).
- :meth:`FaultProxy.delay`: every chunk is delivered ``seconds`` after it arrived, in each direction, in order
  (a slow link: a round trip costs twice that).
- :meth:`FaultProxy.trickle`: at most ``bytes_per_second`` in each direction.
- :meth:`FaultProxy.reset`: the open connections are aborted with an RST, and new ones are reset at once.
- :meth:`FaultProxy.heal`: back to a clean link; connections left silent by a blackhole are reset (their bytes
  are lost: no protocol survives that), so clients reconnect.

It runs its own event loop in a thread, so blocking tests and asyncio tests control it alike. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultProxy"]

_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream, with a silence flag set by a blackhole."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    silent: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                _rst(w)
        me = asyncio.current_task()
        for t in self.tasks:
            if t is not me:
                t.cancel()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:port`` to ``host:upstream_port`` whose link the test breaks; see the module."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.upstream_port = host, upstream_port
        self.mode = "pass"  # pass | blackhole | reset
        self.latency = 0.0
        self.rate: float | None = None  # bytes per second, per direction
        self.connections = 0  # accepted so far
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self.port: int = self._call(self._listen)

    # -- the test's side ---------------------------------------------------------------------------------------
    def blackhole(self) -> None:
        self._call(self._set, "blackhole", silence=True)

    def half_open(self) -> None:
        self._call(self._set, "pass", silence=True)

    def delay(self, seconds: float) -> None:
        self.latency = seconds

    def trickle(self, bytes_per_second: float | None) -> None:
        self.rate = bytes_per_second

    def reset(self) -> None:
        self._call(self._set, "reset", abort=True)

    def heal(self) -> None:
        self.latency, self.rate = 0.0, None
        self._call(self._set, "pass", abort_silent=True)

    def open_links(self) -> int:
        return len(self._links)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop's side ---------------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=256)
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        self._links.clear()
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        if rest:  # every link aborted: their tasks end by themselves, at once
            _, pending = await asyncio.wait(rest, timeout=5)
            for t in pending:
                t.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _set(self, mode: str, *, silence: bool = False, abort: bool = False, abort_silent: bool = False) -> None:
        self.mode = mode
        for link in list(self._links):
            if abort or (abort_silent and link.silent):
                link.abort()
                self._links.discard(link)
            elif silence:
                link.silent = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writer, silent=self.mode == "blackhole")
        if self.mode == "reset":
            _rst(writer)
            return
        self._links.add(link)
        try:
            if link.silent:  # accepted, never answered: read and drop until healed (then reset)
                while await reader.read(_CHUNK):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
            except OSError:
                _rst(writer)
                return
            link.upstream = up_writer
            me = asyncio.current_task()
            assert me is not None
            link.tasks = [me, asyncio.ensure_future(self._pump(up_reader, writer, link))]
            await self._pump(reader, up_writer, link)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        """Copy one direction, each chunk delayed by the latency when it arrived, at most ``rate`` bytes/s."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer, link))
        try:
            while data := await reader.read(_CHUNK):
                if not link.silent:
                    queue.put_nowait((time.monotonic() + self.latency, data))
            await queue.join()
            if not link.silent:
                with contextlib.suppress(OSError):
                    writer.write_eof()
        finally:
            sender.cancel()

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, link: _Link) -> None:
        while True:
            due, data = await queue.get()
            try:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                while data and not link.silent:
                    n = len(data) if self.rate is None else max(1, int(self.rate / 10))
                    writer.write(data[:n])
                    await writer.drain()
                    data = data[n:]
                    if self.rate is not None and data:
                        await asyncio.sleep(n / self.rate)
            except OSError:
                link.abort()
            finally:
                queue.task_done()
