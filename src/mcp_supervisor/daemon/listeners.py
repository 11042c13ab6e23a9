"""Listening sockets the daemon holds for its OS children (``[[daemon.sockets]]``).

Bound once and kept open for the daemon's life, so a child that restarts finds its connections waiting in the
kernel's backlog instead of refused. When systemd socket-activated the daemon (``LISTEN_FDS`` for our pid),
sockets whose ``LISTEN_FDNAMES`` name matches are taken from systemd instead of bound.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from ..config.model import SocketConfig

SD_LISTEN_FDS_START = 3


def from_systemd() -> dict[str, socket.socket]:
    """The sockets systemd passed us, by name (``LISTEN_FDNAMES``; unnamed ones are "unknown"); the variables are
    removed from our environment (children get their own)."""
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    names = os.environ.pop("LISTEN_FDNAMES", "").split(":")
    if pid != str(os.getpid()) or not count.isdigit():
        return {}
    out: dict[str, socket.socket] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = names[i] if i < len(names) and names[i] else "unknown"
        out.setdefault(name, socket.socket(fileno=fd))
    return out


def bind(cfg: SocketConfig) -> socket.socket:
    """A listening socket for ``cfg``; OSError says what failed (address in use, permission...)."""
    if cfg.listen.unix:
        path = cfg.listen.path
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            os.unlink(path)  # a stale socket from a previous run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            if cfg.mode is not None:
                os.chmod(path, cfg.mode)
            sock.listen(cfg.backlog)
        except BaseException:
            sock.close()
            raise
        return sock
    host, port = cfg.listen.host, cfg.listen.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(cfg.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class HeldSockets:
    """The daemon's held sockets by name; ``hold`` binds (or takes from systemd) what is not yet held."""

    def __init__(self, inherited: dict[str, socket.socket] | None = None) -> None:
        self._inherited = inherited or {}
        self.sockets: dict[str, socket.socket] = {}
        self._configs: dict[str, SocketConfig] = {}
        self._bound_paths: list[str] = []  # unix sockets we created (not systemd's): removed at close

    def hold(self, configs: tuple[SocketConfig, ...]) -> list[str]:
        """Hold every socket ``configs`` names; returns warnings (a changed address of a held socket waits for
        the next start). OSError (naming the socket) when one cannot be bound; those bound before stay held."""
        warnings = []
        for cfg in configs:
            held = self._configs.get(cfg.name)
            if held is not None:
                if held != cfg:
                    warnings.append(f"daemon.sockets {cfg.name!r} changed: it takes effect at the next start")
                continue
            sock = self._inherited.pop(cfg.name, None)
            if sock is None:
                try:
                    sock = bind(cfg)
                except OSError as e:
                    raise OSError(
                        e.errno, f"cannot listen on {cfg.listen} for socket {cfg.name!r}: {e.strerror or e}"
                    ) from None
                if cfg.listen.unix:
                    self._bound_paths.append(cfg.listen.path)
            self.sockets[cfg.name] = sock
            self._configs[cfg.name] = cfg
        return warnings

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        for path in self._bound_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._bound_paths.clear()
        self.sockets.clear()
        self._configs.clear()
