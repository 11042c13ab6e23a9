"""sd_notify(3) and the watchdog; the only reader of NOTIFY_SOCKET and WATCHDOG_*.

Construct :class:`Notifier` before spawning anything: it removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
``WATCHDOG_PID`` from the environment so children never inherit them (systemd would drop or misread their
messages). Outside systemd every method is a no-op.

Datagrams are sent without blocking: the receiver's queue is short (``net.unix.max_dgram_qlen``, 10 by default),
and a blocking ``sendto`` to a receiver that is slow to drain would freeze the event loop — timers, the admin
port, shutdown, everything. A datagram that cannot be queued is dropped and counted (``dropped``); the next
``STATUS=`` or ``WATCHDOG=1`` carries on.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

MAX_VALUE = 2000  # characters of one field: STATUS= is a short line for `systemctl status`


class Notifier:
    """``redact`` cleans every value sent (``STATUS=`` carries error messages, and systemd shows it to anyone)."""

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        self._redact = redact
        addr = os.environ.pop("NOTIFY_SOCKET", None)
        pid_ok = os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        usec = os.environ.pop("WATCHDOG_USEC", "") if pid_ok else ""
        os.environ.pop("WATCHDOG_PID", None)
        self.watchdog_usec = int(usec) if usec.isdigit() else 0
        if addr and addr.startswith("@"):
            addr = "\0" + addr[1:]
        self._addr = addr if addr and addr[0] in "/\0" else None
        self._sock: socket.socket | None = None
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def send(self, **fields: object) -> None:
        if self._addr is None:
            return
        msg = "\n".join(f"{k}={_one_line(v)}" for k, v in fields.items())
        if self._redact is not None:
            msg = self._redact(msg)
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(msg.encode(), self._addr)
        except OSError:  # full queue (EAGAIN), receiver gone, ...: sd_notify(3) says the result is best ignored
            self.dropped += 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str = "stopping") -> None:
        self.send(STOPPING=1, STATUS=status)


def _one_line(value: object) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."
